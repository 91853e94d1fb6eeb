"""The installed packages, read from the text of an image's ``/var/lib/dpkg/status``.

dpkg's status file is deb822: stanzas separated by blank lines, ``Field: value``, continuation lines
start with a space. Only stanzas whose ``Status`` ends in ``installed`` are packages in the image
(``config-files`` and ``half-installed`` ones are not)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import AttestationError


@dataclass(frozen=True, order=True)
class DebPackage:
    name: str
    architecture: str
    version: str
    source: str                # the source package (dpkg's ``Source:``, else the binary's own name)
    source_version: str        # ``Source: glibc (2.36-9+deb12u4)`` gives a version, else the binary's
    maintainer: str = ""
    homepage: str = ""

    @property
    def deb_file(self) -> str:
        """The name apt gives the downloaded .deb (``:`` of an epoch is written ``%3a``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


_SOURCE = re.compile(r"^(?P<name>\S+)(?:\s+\((?P<version>[^)]+)\))?$")


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line[1:]
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            fields[last] = value.strip()
    if fields:
        yield fields


def installed_packages(status_text: str, *, what: str = "dpkg status") -> list[DebPackage]:
    """Every installed package, sorted by (name, architecture, version). ``what`` names the file in errors."""
    out = []
    for fields in _stanzas(status_text):
        if not fields.get("status", "").endswith(" installed"):
            continue
        try:
            name, arch, version = fields["package"], fields["architecture"], fields["version"]
        except KeyError as exc:
            raise AttestationError(f"a stanza with status 'installed' has no {exc.args[0].title()} field "
                                   f"({fields.get('package', '?')})", file=what) from None
        source, source_version = name, version
        if fields.get("source"):
            match = _SOURCE.match(fields["source"])
            if match:
                source = match["name"]
                source_version = match["version"] or version
        out.append(DebPackage(name=name, architecture=arch, version=version, source=source,
                              source_version=source_version, maintainer=fields.get("maintainer", ""),
                              homepage=fields.get("homepage", "")))
    if not out:
        raise AttestationError("no installed package in it: is this a dpkg status file?", file=what)
    return sorted(out)

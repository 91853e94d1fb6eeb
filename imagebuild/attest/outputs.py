"""The attestations of one finished build, written into its staging dir beside the artifact:

- ``sbom.spdx.json``, ``sbom.cdx.json``: SPDX 2.3 and CycloneDX 1.6, from the image's dpkg database
  (an EL image has none: no SBOM, and a line says so);
- ``provenance.intoto.jsonl``: SLSA v1 provenance, its byproducts the two SBOMs' digests;
- ``boot-test.intoto.jsonl``: where the image booted and which checks passed (only after a boot test);
- ``SHA256SUMS`` gets a line for each, and ``SHA256SUMS.sig`` signs it (SSH signature format).

The statements are one line each, the in-toto bundle format (``.intoto.jsonl``): a DSSE envelope when a
signing key is configured, the plain statement otherwise; ``verify`` tells them apart by their
``payloadType``/``_type``. Everything comes from the manifest and the arguments, nothing from the clock
or chance: the documents' time is the build's ``source_date_epoch`` (else its ``finished`` time), the
SBOMs' serials derive from the artifact's digest, and ed25519 signatures are deterministic, so the same
build gives the same bytes.

The key is a local ed25519 file named by ``IMAGEBUILD_SIGNING_KEY``; ``check_signing_key`` loads it once
before any work (a missing, unreadable or wrong key is a ``SigningKeyError`` naming the file).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..events import NULL_REPORTER, Reporter
from ..manifest import write_sha256sums
from ..settings import current
from .dpkg import installed_packages
from .dsse import keyid, load_private_key, sign_file, sign_statement
from .errors import AttestationError
from .sbom import cached_deb_sha256, cyclonedx_json, spdx_json
from .statement import boot_test, provenance, statement_bytes

SPDX = "sbom.spdx.json"
CYCLONEDX = "sbom.cdx.json"
PROVENANCE = "provenance.intoto.jsonl"
BOOT_TEST = "boot-test.intoto.jsonl"
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"


@dataclass(frozen=True)
class Attestations:
    """What ``write_attestations`` wrote: the files (in the staging dir), whether the statements are
    DSSE envelopes (``signed``) or plain, by which key, and what was left out and why."""

    files: tuple[Path, ...]
    signed: bool
    keyid: str | None
    notes: tuple[str, ...]

    def to_data(self) -> dict[str, Any]:
        return {"files": [p.name for p in self.files], "signed": self.signed, "keyid": self.keyid,
                "statements": "dsse" if self.signed else "plain", "notes": list(self.notes)}


def check_signing_key(key: Path | None = None) -> Path | None:
    """The signing key (``key``, else ``IMAGEBUILD_SIGNING_KEY``), loaded once to prove it is a usable
    ed25519 private key, or None when none is configured (the build's attestations are then unsigned).
    Call it before anything starts; raises ``SigningKeyError`` naming the file."""
    path = key if key is not None else current().signing_key
    if path is None:
        return None
    load_private_key(path)
    return Path(path)


def creation_time(manifest: Mapping[str, Any]) -> int:
    """The documents' time, never the clock: the manifest's ``source_date_epoch``, else when the build
    finished (or started)."""
    value = manifest.get("source_date_epoch")
    if value is not None:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise AttestationError(f"the manifest's source_date_epoch {value!r} is not an epoch") from None
    for name in ("finished", "started"):
        if manifest.get(name):
            try:
                return calendar.timegm(time.strptime(str(manifest[name]), "%Y-%m-%dT%H:%M:%SZ"))
            except ValueError:
                raise AttestationError(f"the manifest's {name} time {manifest[name]!r} is not "
                                       "YYYY-MM-DDTHH:MM:SSZ") from None
    raise AttestationError("the manifest has no source_date_epoch, finished or started time: the "
                           "attestations' time would have to come from the clock")


def write_attestations(staging: Path, manifest: Mapping[str, Any], *, artifact: Path, content_sha256: str,
                       dpkg_status: str | None, key: Path | None, deb_cache: Path | None = None,
                       reporter: Reporter = NULL_REPORTER) -> Attestations:
    """Write the SBOMs, the provenance and boot-test statements (signed with ``key`` when given), add
    them to ``staging/SHA256SUMS`` (already written for the artifact and manifest.json) and sign it.

    ``manifest``: the build's manifest as written (``artifact.sha256`` and ``sha512`` are the artifact's);
    ``artifact``: the image, named as in the manifest; ``content_sha256``: its content digest
    (``content_digest.content_sha256``); ``dpkg_status``: the text of the image's
    ``/var/lib/dpkg/status`` (None: no SBOM); ``deb_cache``: the apt cache the build installed from,
    for the .debs' digests."""
    staging = Path(staging)
    recorded = manifest.get("artifact", {})
    if Path(artifact).name != recorded.get("file"):
        raise AttestationError(f"the artifact is {Path(artifact).name} but the manifest names "
                               f"{recorded.get('file')!r}", file=staging / "manifest.json")
    if recorded.get("content_sha256") not in (None, content_sha256):
        raise AttestationError(f"content_sha256 {content_sha256} differs from the manifest's "
                               f"{recorded['content_sha256']}", file=staging / "manifest.json")
    sums = staging / SUMS
    listed: dict[str, str | None] = dict(read_sums(sums))
    created = creation_time(manifest)
    written: list[Path] = []
    notes: list[str] = []

    def write(name: str, text: str) -> str:
        path = staging / name
        path.write_text(text)
        written.append(path)
        return hashlib.sha256(text.encode()).hexdigest()

    def statement_text(statement: dict[str, Any]) -> str:
        return sign_statement(statement, key) if key is not None else statement_bytes(statement).decode() + "\n"

    byproducts: dict[str, str] = {}
    deb_sha256 = None
    if dpkg_status is not None:
        if deb_cache is not None:
            deb_sha256 = cached_deb_sha256(deb_cache, installed_packages(dpkg_status, what="the image's dpkg status"))
        byproducts[SPDX] = write(SPDX, spdx_json(manifest, dpkg_status, created=created, deb_sha256=deb_sha256))
        byproducts[CYCLONEDX] = write(CYCLONEDX, cyclonedx_json(manifest, dpkg_status, created=created,
                                                                 deb_sha256=deb_sha256))
    else:
        notes.append("no dpkg database (an rpm-based image has none): no SBOM written; the provenance "
                     "lists the manifest's packages")
    write(PROVENANCE, statement_text(provenance(manifest, dpkg_status=dpkg_status, deb_sha256=deb_sha256,
                                                content_sha256=content_sha256, byproducts=byproducts)))
    boot = manifest.get("boot_test")
    if isinstance(boot, Mapping) and boot.get("cells"):
        write(BOOT_TEST, statement_text(boot_test(manifest, content_sha256=content_sha256)))
    else:
        notes.append("no boot-test result (built with --no-boot-test, or a recipe without one): "
                     "no boot-test attestation")
    for path in written:
        listed[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_sha256sums(staging, listed)
    signature = staging / SIGNATURE
    ident = None
    if key is not None:
        written.append(sign_file(sums, key))
        ident = keyid(load_private_key(key).public_key())
    else:
        signature.unlink(missing_ok=True)
        notes.append("no signing key (IMAGEBUILD_SIGNING_KEY): the statements are plain, SHA256SUMS unsigned")
    for note in notes:
        reporter.info(note)
    reporter.info(f"attestations: {', '.join(p.name for p in written)} ("
                  + (f"signed, key {ident[:16]})" if ident else "unsigned)"))
    return Attestations(files=tuple(written), signed=key is not None, keyid=ident, notes=tuple(notes))


def read_sums(path: Path) -> dict[str, str]:
    """``sha256sum`` output: name → sha256, in the file's order."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AttestationError("not found (write it before the attestations)", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AttestationError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=path) from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if not sep or len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise AttestationError(f"line {n} is not 'SHA256  NAME': {line[:80]!r}", file=path)
        if name in out:
            raise AttestationError(f"{name} is listed twice", file=path)
        out[name] = digest
    return out


def statement_of(text: str, *, file: Path | str) -> tuple[dict[str, Any], bool]:
    """A ``.intoto.jsonl`` line read back, unverified: (the DSSE envelope or the plain statement,
    whether it is an envelope)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise AttestationError(f"{len(lines)} lines; one envelope or statement expected", file=file)
    try:
        doc = json.loads(lines[0])
    except ValueError:
        raise AttestationError("not JSON", file=file) from None
    if not isinstance(doc, dict):
        raise AttestationError("not a JSON object", file=file)
    return doc, "payloadType" in doc

"""SPDX 2.3 and CycloneDX 1.6 SBOMs of one image, made and validated with the formats' own libraries
(spdx-tools, cyclonedx-python-lib; purls with packageurl-python).

What is in the image comes from the image's own package database (the text of its
``/var/lib/dpkg/status``); the manifest gives the image's name and digests and the distribution.
Both documents are reproducible: their time is the one passed in (the build's SOURCE_DATE_EPOCH, never
the clock), their serial number / namespace is a uuid5 of the artifact's sha256, and packages are sorted.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packageurl import PackageURL

from .dpkg import DebPackage, installed_packages
from .errors import AttestationError

TOOL = "imagebuild"
# Ours: a namespace for ids derived from an artifact digest (uuid5), never resolved.
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://imagebuild.invalid/sbom")
NAMESPACE_BASE = "https://imagebuild.invalid/spdx"


# --- inputs ---------------------------------------------------------------------------------------------

def _image(manifest: Mapping[str, Any]) -> dict[str, str]:
    try:
        artifact = manifest["artifact"]
        out = {"file": artifact["file"], "sha256": artifact["sha256"]}
    except (KeyError, TypeError) as exc:
        raise AttestationError(f"the manifest has no artifact {exc.args[0]!s}: cannot name the image") from None
    recipe = manifest.get("recipe", {})
    image = recipe.get("image", {})
    out["name"] = recipe.get("name") or Path(out["file"]).stem
    out["version"] = str(recipe.get("version") or image.get("os_version") or "")
    out["sha512"] = artifact.get("sha512", "")
    out["distro_ns"] = image.get("os_distro") or image.get("family") or "debian"
    out["distro"] = f"{out['distro_ns']}-{image['os_version']}" if image.get("os_version") else ""
    return out


def created_time(value: datetime | int | str | None, manifest: Mapping[str, Any]) -> datetime:
    """The documents' time: ``value`` (a datetime, an epoch, or a SOURCE_DATE_EPOCH string), else the
    manifest's ``source_date_epoch``; never the clock, so two builds of the same inputs agree."""
    if value is None:
        value = manifest.get("source_date_epoch")
        if value is None:
            raise AttestationError("no creation time: pass created= (the build's SOURCE_DATE_EPOCH); "
                                   "the manifest has no source_date_epoch")
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        try:
            when = datetime.fromtimestamp(int(value), tz=UTC)
        except (TypeError, ValueError):
            raise AttestationError(f"creation time {value!r} is not an epoch (seconds)") from None
    return when.astimezone(UTC).replace(microsecond=0)


def cached_deb_sha256(cache_dir: Path | str, packages: Iterable[DebPackage]) -> dict[str, str]:
    """sha256 of the .deb of each package's exact version in an apt cache directory (the manifest's
    ``inputs.package_cache.dir``), keyed ``name:arch``; packages whose .deb is not there are left out."""
    out = {}
    for pkg in packages:
        path = Path(cache_dir) / pkg.deb_file
        try:
            with open(path, "rb") as f:
                out[f"{pkg.name}:{pkg.architecture}"] = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise AttestationError(f"cannot read: {exc.strerror}", file=path) from None
    return out


def _deb_sha256(manifest: Mapping[str, Any], given: Mapping[str, str] | None) -> Mapping[str, str]:
    if given is not None:
        return given
    recorded = manifest.get("inputs", {}).get("package_cache", {}).get("sha256")
    return recorded if isinstance(recorded, Mapping) else {}


def _digest_of(pkg: DebPackage, digests: Mapping[str, str]) -> str | None:
    """A mapping keyed ``name:arch`` or just ``name`` (the manifest's packages are name → version)."""
    return digests.get(f"{pkg.name}:{pkg.architecture}") or digests.get(pkg.name)


def purl(pkg: DebPackage, *, namespace: str = "debian", distro: str = "") -> str:
    qualifiers = {"arch": pkg.architecture} if pkg.architecture else {}
    if distro:
        qualifiers["distro"] = distro
    return PackageURL(type="deb", namespace=namespace, name=pkg.name, version=pkg.version,
                      qualifiers=qualifiers).to_string()


def _packages(dpkg_status: str | Iterable[DebPackage]) -> list[DebPackage]:
    if isinstance(dpkg_status, str):
        return installed_packages(dpkg_status)
    return sorted(dpkg_status)


def _serial(image: Mapping[str, str]) -> uuid.UUID:
    return uuid.uuid5(UUID_NAMESPACE, f"{image['name']}:{image['sha256']}")


# --- SPDX 2.3 -------------------------------------------------------------------------------------------

def _spdx_id(kind: str, *parts: str) -> str:
    """``SPDXRef-`` ids allow only letters, digits, ``.`` and ``-``: anything else (``+`` in
    ``libstdc++6``, ``~``) becomes ``-XX`` with its hex code, so two names never share an id."""
    safe = "-".join("".join(c if c.isascii() and (c.isalnum() or c == ".") else f"-{ord(c):02X}" for c in p)
                    for p in parts)
    return f"SPDXRef-{kind}-{safe}"


def spdx_json(manifest: Mapping[str, Any], dpkg_status: str | Iterable[DebPackage], *,
              created: datetime | int | str | None = None,
              deb_sha256: Mapping[str, str] | None = None) -> str:
    """The image's SPDX 2.3 document as JSON text, validated by spdx-tools.

    ``dpkg_status``: the text of the image's ``/var/lib/dpkg/status`` (or parsed packages);
    ``deb_sha256``: .deb digests keyed ``name:arch`` or ``name`` (see ``cached_deb_sha256``), default
    the manifest's ``inputs.package_cache.sha256`` if recorded."""
    from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
    from spdx_tools.spdx.model import (
        Actor,
        ActorType,
        Checksum,
        ChecksumAlgorithm,
        CreationInfo,
        Document,
        ExternalPackageRef,
        ExternalPackageRefCategory,
        Package,
        PackagePurpose,
        Relationship,
        RelationshipType,
        SpdxNoAssertion,
    )
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    image = _image(manifest)
    packages = _packages(dpkg_status)
    digests = _deb_sha256(manifest, deb_sha256)
    when = created_time(created, manifest)
    image_id = _spdx_id("Image", image["name"])
    checksums = [Checksum(ChecksumAlgorithm.SHA256, image["sha256"])]
    if image["sha512"]:
        checksums.append(Checksum(ChecksumAlgorithm.SHA512, image["sha512"]))
    spdx_packages = [Package(
        spdx_id=image_id, name=image["name"], version=image["version"] or None, file_name=image["file"],
        download_location=SpdxNoAssertion(), files_analyzed=False, checksums=checksums,
        license_concluded=SpdxNoAssertion(), license_declared=SpdxNoAssertion(),
        copyright_text=SpdxNoAssertion(), primary_package_purpose=PackagePurpose.OPERATING_SYSTEM,
        comment="the disk image: its packages are what its dpkg database lists as installed")]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, image_id)]
    for pkg in packages:
        pid = _spdx_id("deb", pkg.name, pkg.architecture)
        sha = _digest_of(pkg, digests)
        spdx_packages.append(Package(
            spdx_id=pid, name=pkg.name, version=pkg.version,
            file_name=pkg.deb_file if sha else None,
            download_location=SpdxNoAssertion(), files_analyzed=False,
            checksums=[Checksum(ChecksumAlgorithm.SHA256, sha)] if sha else [],
            homepage=pkg.homepage or None,
            source_info=f"built from the Debian source package {pkg.source} {pkg.source_version}",
            # dpkg's database declares no licence (Debian's is in each package's copyright file).
            license_concluded=SpdxNoAssertion(), license_declared=SpdxNoAssertion(),
            copyright_text=SpdxNoAssertion(),
            external_references=[ExternalPackageRef(
                ExternalPackageRefCategory.PACKAGE_MANAGER, "purl",
                purl(pkg, namespace=image["distro_ns"], distro=image["distro"]))],
            primary_package_purpose=PackagePurpose.INSTALL,
            comment=f"architecture {pkg.architecture}"))
        relationships.append(Relationship(image_id, RelationshipType.CONTAINS, pid))
    document = Document(
        creation_info=CreationInfo(
            spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name=f"{image['name']} ({image['file']})",
            document_namespace=f"{NAMESPACE_BASE}/{image['name']}-{_serial(image)}",
            creators=[Actor(ActorType.TOOL, TOOL)], created=when),
        packages=spdx_packages, relationships=relationships)
    problems = validate_full_spdx_document(document, "SPDX-2.3")
    if problems:
        raise AttestationError("the SPDX document does not validate: "
                               + "; ".join(p.validation_message for p in problems[:5]))
    data = DocumentConverter().convert(document)
    # spdx-tools writes the enum's Python name (PACKAGE_MANAGER); the SPDX 2.3 text and its official JSON
    # schema say PACKAGE-MANAGER (spdx/tools-python#813, spdx/spdx-spec#798): write the spec's spelling,
    # which every reader accepts (spdx-tools parses both).
    for package in data.get("packages", []):
        for ref in package.get("externalRefs", []):
            ref["referenceCategory"] = ref["referenceCategory"].replace("_", "-")
    return json.dumps(data, indent=4) + "\n"


# --- CycloneDX 1.6 --------------------------------------------------------------------------------------

def cyclonedx_json(manifest: Mapping[str, Any], dpkg_status: str | Iterable[DebPackage], *,
                   created: datetime | int | str | None = None,
                   deb_sha256: Mapping[str, str] | None = None) -> str:
    """The image's CycloneDX 1.6 BOM as JSON text (``validate_sbom`` checks it against the schema).
    Arguments as for ``spdx_json``."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    image = _image(manifest)
    packages = _packages(dpkg_status)
    digests = _deb_sha256(manifest, deb_sha256)
    when = created_time(created, manifest)
    image_hashes = [HashType(alg=HashAlgorithm.SHA_256, content=image["sha256"])]
    if image["sha512"]:
        image_hashes.append(HashType(alg=HashAlgorithm.SHA_512, content=image["sha512"]))
    top = Component(name=image["name"], version=image["version"] or None, type=ComponentType.OPERATING_SYSTEM,
                    bom_ref=f"image:{image['name']}", hashes=image_hashes,
                    properties=[Property(name="imagebuild:file", value=image["file"])])
    components = []
    for pkg in packages:
        sha = _digest_of(pkg, digests)
        ref = purl(pkg, namespace=image["distro_ns"], distro=image["distro"])
        properties = [Property(name="imagebuild:deb:architecture", value=pkg.architecture),
                      Property(name="imagebuild:deb:source", value=pkg.source),
                      Property(name="imagebuild:deb:source-version", value=pkg.source_version)]
        if sha:
            properties.append(Property(name="imagebuild:deb:file", value=pkg.deb_file))
        components.append(Component(
            name=pkg.name, version=pkg.version, type=ComponentType.LIBRARY, bom_ref=ref,
            purl=PackageURL.from_string(ref),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)] if sha else [],
            properties=properties))
    bom = Bom(serial_number=_serial(image), metadata=BomMetaData(component=top, timestamp=when),
              components=components)
    bom.metadata.tools.components.add(Component(name=TOOL, type=ComponentType.APPLICATION))
    bom.register_dependency(top, components)
    # Not validated against the JSON schema here: the library writes it from its model, and the schema
    # check (3-4 s: jsonschema's format checkers load, and uniqueItems compares every pair of the ~250
    # components) is `validate_sbom`'s, run by `invoke verify` and the tests.
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def validate_sbom(path: Path | str, name: str, *, error: type[AttestationError] = AttestationError) -> None:
    """``path``, an SBOM this module wrote (``name`` says which: ``*.spdx.json`` or ``*.cdx.json``),
    checked against its format: SPDX 2.3 parsed and validated by spdx-tools, CycloneDX 1.6 against the
    JSON schema cyclonedx-python-lib ships. ``error`` (an ``AttestationError``) naming the file if it
    does not."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read it: {exc}", file=path) from None
    if name.endswith(".cdx.json"):
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator

        problem = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
        if problem is not None:
            raise error(f"does not validate against the CycloneDX 1.6 schema: {problem}", file=path)
        return
    from spdx_tools.spdx.parser.error import SPDXParsingError
    from spdx_tools.spdx.parser.json.json_parser import parse_from_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    try:
        document = parse_from_file(str(path))
    except SPDXParsingError as exc:
        raise error("is not an SPDX document: " + "; ".join(exc.get_messages()[:3]), file=path) from None
    except ValueError as exc:
        raise error(f"is not an SPDX document: {exc}", file=path) from None
    problems = validate_full_spdx_document(document, "SPDX-2.3")
    if problems:
        raise error("does not validate as SPDX 2.3: " + "; ".join(p.validation_message for p in problems[:5]),
                    file=path)

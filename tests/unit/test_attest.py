"""imagebuild.attest: SBOMs against their schemas and reproducible, provenance and boot-test statements,
DSSE and detached signatures with their tamper cases. No VM, no image: a synthetic manifest and dpkg status."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagebuild.attest import (
    AttestationError,
    SignatureInvalid,
    SigningKeyError,
    boot_test,
    cached_deb_sha256,
    cyclonedx_json,
    installed_packages,
    keyid,
    load_private_key,
    pae,
    provenance,
    public_key_openssh,
    sign_envelope,
    sign_file,
    sign_statement,
    spdx_json,
    validate_sbom,
    verify_envelope,
    verify_file,
    verify_statement,
)
from imagebuild.errors import ImageBuildError

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "schemas"
EPOCH = 1733443200          # 2024-12-06T00:00:00Z

# A dpkg status as bookworm writes it: a Source with and without a version, an epoch, a "+" in a name,
# a package removed but for its config files (not in the image), a multi-line Description.
DPKG_STATUS = """\
Package: base-files
Essential: yes
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 340
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 12.4+deb12u15
Replaces: base
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy of a Debian system, and
 several important miscellaneous files.

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u13
Homepage: https://www.gnu.org/software/libc/libc.html
Description: GNU C Library: Shared libraries

Package: libstdc++6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: gcc-12 (12.2.0-14+deb12u1)
Version: 12.2.0-14+deb12u1
Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>
Description: GNU Standard C++ Library v3

Package: bsdutils
Essential: yes
Status: install ok installed
Architecture: amd64
Source: util-linux (2.38.1-5+deb12u3)
Version: 1:2.38.1-5+deb12u3
Maintainer: util-linux packagers <util-linux@packages.debian.org>
Description: basic utilities from 4.4BSD-Lite

Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
Maintainer: Debian Adduser Developers <adduser@packages.debian.org>
Description: add and remove users and groups

Package: nano
Status: deinstall ok config-files
Architecture: amd64
Version: 7.2-1+deb12u1
Conffiles:
 /etc/nanorc 8b4e3bf4ba8d4b1b1e4a5a2ed8bd2a0a
Description: small, friendly text editor inspired by Pico
"""

INSTALLED = ["adduser", "base-files", "bsdutils", "libc6", "libstdc++6"]


def make_manifest() -> dict:
    return {
        "schema": 1,
        "build_id": "debian12-20261206T134947-d54cf7",
        "started": "2026-12-06T13:49:47Z",
        "finished": "2026-12-06T13:54:30Z",
        "accelerator": "tcg",
        "artifact": {"file": "debian12.qcow2", "format": "qcow2", "sha256": "ab" * 32, "sha512": "cd" * 64,
                     "content_sha256": "ef" * 32},
        "inputs": {
            "mirror": "http://deb.debian.org/debian",
            "sources": ["deb http://deb.debian.org/debian bookworm main",
                        "deb http://deb.debian.org/debian-security bookworm-security main"],
            "packages": {"adduser": "3.134", "base-files": "12.4+deb12u15", "bsdutils": "1:2.38.1-5+deb12u3",
                         "libc6": "2.36-9+deb12u13", "libstdc++6": "12.2.0-14+deb12u1"},
            "package_cache": {"dir": "/nonexistent/apt", "packages": 5, "size": 1, "from_cache": 0},
            "archive": {"bookworm": "11" * 32, "bookworm-security": "22" * 32},
        },
        "recipe": {"name": "debian12", "version": "12", "extends": "debian-base",
                   "image": {"family": "debian", "os_distro": "debian", "os_version": "12"}},
        "tools": {"mmdebstrap": "mmdebstrap 1.3.5", "qemu-img": "qemu-img version 7.2.22"},
        "stages": {"boot-test": 258.59},
        "boot_test": {
            "accelerator": "tcg", "passed": True,
            "cells": [
                {"cell": "bios/pc", "firmware": "bios", "machine": "pc", "seed": "nova", "disk_bus": "virtio",
                 "accelerator": "tcg", "passed": True, "seconds": 185.7,
                 "checks": [{"name": "firmware", "ok": True, "skipped": False, "detail": "BIOS"},
                            {"name": "dhcp", "ok": True, "skipped": False, "detail": "leased"}]},
                {"cell": "secure-boot/q35", "firmware": "secure-boot", "machine": "q35", "seed": "none",
                 "disk_bus": "scsi", "accelerator": "tcg", "passed": True, "seconds": 72.9,
                 "checks": [{"name": "firmware", "ok": True, "skipped": False, "detail": "Secure Boot on"}]},
            ],
            "matrix_checks": [{"name": "distinct-host-keys", "ok": True, "skipped": False}],
        },
    }


DEB_SHA256 = {"libc6": "01" * 32, "bsdutils:amd64": "02" * 32}


@pytest.fixture
def key(tmp_path) -> Path:
    path = tmp_path / "signing.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


@pytest.fixture
def other_key(tmp_path) -> Path:
    path = tmp_path / "other.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


# --- dpkg -----------------------------------------------------------------------------------------------

def test_installed_packages_reads_source_and_skips_config_files():
    pkgs = {p.name: p for p in installed_packages(DPKG_STATUS)}
    assert sorted(pkgs) == INSTALLED
    assert (pkgs["libc6"].source, pkgs["libc6"].source_version) == ("glibc", "2.36-9+deb12u13")
    assert (pkgs["libstdc++6"].source, pkgs["libstdc++6"].source_version) == ("gcc-12", "12.2.0-14+deb12u1")
    assert pkgs["adduser"].source == "adduser" and pkgs["adduser"].architecture == "all"
    assert pkgs["bsdutils"].deb_file == "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"


def test_not_a_status_file_is_a_typed_error():
    with pytest.raises(AttestationError, match="no installed package"):
        installed_packages("hello\n", what="image:/var/lib/dpkg/status")


def test_cached_deb_sha256_hashes_the_exact_version(tmp_path):
    pkgs = installed_packages(DPKG_STATUS)
    (tmp_path / "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb").write_bytes(b"deb bytes")
    (tmp_path / "libc6_2.36-9+deb12u1_amd64.deb").write_bytes(b"an older version")
    assert cached_deb_sha256(tmp_path, pkgs) == {"bsdutils:amd64": hashlib.sha256(b"deb bytes").hexdigest()}


# --- SBOMs ----------------------------------------------------------------------------------------------

def test_spdx_validates_against_the_official_schema_and_names_every_package():
    import jsonschema

    text = spdx_json(make_manifest(), DPKG_STATUS, created=EPOCH, deb_sha256=DEB_SHA256)
    doc = json.loads(text)
    jsonschema.validate(doc, json.loads((SCHEMAS / "spdx-2.3.schema.json").read_text()))
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["creationInfo"]["created"] == "2024-12-06T00:00:00Z"
    packages = {p["name"]: p for p in doc["packages"]}
    assert sorted(packages) == sorted([*INSTALLED, "debian12"])
    image = packages["debian12"]
    assert {"algorithm": "SHA256", "checksumValue": "ab" * 32} in image["checksums"]
    for name in INSTALLED:
        purls = [r["referenceLocator"] for r in packages[name]["externalRefs"] if r["referenceType"] == "purl"]
        assert purls == [_purl(name)]
        assert packages[name]["licenseDeclared"] == "NOASSERTION"   # dpkg's database declares none
    assert packages["libc6"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": "01" * 32}]
    assert packages["bsdutils"]["packageFileName"] == "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"
    assert "checksums" not in packages["adduser"]
    assert "gcc-12" in packages["libstdc++6"]["sourceInfo"]
    contains = {r["relatedSpdxElement"] for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"}
    assert len(contains) == len(INSTALLED)


def test_spdx_is_valid_for_spdx_tools_own_parser_and_validator(tmp_path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    path = tmp_path / "debian12.spdx.json"
    path.write_text(spdx_json(make_manifest(), DPKG_STATUS, created=EPOCH))
    assert validate_full_spdx_document(parse_file(str(path)), "SPDX-2.3") == []


@pytest.mark.parametrize("name", ["sbom.spdx.json", "sbom.cdx.json"])
def test_validate_sbom_passes_ours_and_names_the_file_of_a_broken_one(name, tmp_path):
    make = spdx_json if name.endswith(".spdx.json") else cyclonedx_json
    good = tmp_path / name
    good.write_text(make(make_manifest(), DPKG_STATUS, created=EPOCH, deb_sha256=DEB_SHA256))
    validate_sbom(good, name)
    doc = json.loads(good.read_text())
    if name.endswith(".spdx.json"):
        doc["packages"][1]["SPDXID"] = "not an spdx id"
    else:
        doc["components"][0]["type"] = "not-a-type"
    bad = tmp_path / "bad" / name
    bad.parent.mkdir()
    bad.write_text(json.dumps(doc))
    with pytest.raises(AttestationError, match=rf"^{re.escape(str(bad))}: does not validate .*not") as err:
        validate_sbom(bad, name)
    assert "Traceback" not in str(err.value)
    bad.write_text("{}")
    with pytest.raises(AttestationError, match=re.escape(str(bad))):
        validate_sbom(bad, name)


def test_cyclonedx_validates_against_the_1_6_schema_and_names_every_package():
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = cyclonedx_json(make_manifest(), DPKG_STATUS, created=EPOCH, deb_sha256=DEB_SHA256)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6" and bom["metadata"]["timestamp"].startswith("2024-12-06T00:00:00")
    top = bom["metadata"]["component"]
    assert top["name"] == "debian12" and {"alg": "SHA-256", "content": "ab" * 32} in top["hashes"]
    components = {c["name"]: c for c in bom["components"]}
    assert sorted(components) == INSTALLED
    for name in INSTALLED:
        assert components[name]["purl"] == _purl(name)
    props = {p["name"]: p["value"] for p in components["libstdc++6"]["properties"]}
    assert props["imagebuild:deb:source"] == "gcc-12" and props["imagebuild:deb:architecture"] == "amd64"
    assert components["bsdutils"]["hashes"] == [{"alg": "SHA-256", "content": "02" * 32}]
    assert "licenses" not in components["libc6"]


@pytest.mark.parametrize("make", [spdx_json, cyclonedx_json])
def test_sboms_are_byte_identical_when_made_twice_and_stable_per_artifact(make):
    manifest = make_manifest()
    shuffled = "\n\n".join(reversed(DPKG_STATUS.strip().split("\n\n"))) + "\n"
    first = make(manifest, DPKG_STATUS, created=EPOCH, deb_sha256=DEB_SHA256)
    assert make(copy.deepcopy(manifest), shuffled, created=EPOCH, deb_sha256=DEB_SHA256) == first
    other = copy.deepcopy(manifest)
    other["artifact"]["sha256"] = "ac" * 32

    def serial(doc: dict) -> str:
        return doc.get("serialNumber") or doc["documentNamespace"]

    assert serial(json.loads(make(other, DPKG_STATUS, created=EPOCH))) != serial(json.loads(first))


def test_sbom_time_comes_from_the_manifest_or_is_refused():
    manifest = make_manifest()
    with pytest.raises(AttestationError, match="SOURCE_DATE_EPOCH"):
        spdx_json(manifest, DPKG_STATUS)
    manifest["source_date_epoch"] = EPOCH
    assert '"created": "2024-12-06T00:00:00Z"' in spdx_json(manifest, DPKG_STATUS)


def _purl(name: str) -> str:
    version = dict(make_manifest()["inputs"]["packages"])[name]
    arch = "all" if name == "adduser" else "amd64"
    from packageurl import PackageURL

    return PackageURL("deb", "debian", name, version, {"arch": arch, "distro": "debian-12"}).to_string()


# --- statements -----------------------------------------------------------------------------------------

def test_provenance_subject_and_dependencies():
    st = provenance(make_manifest(), dpkg_status=DPKG_STATUS, deb_sha256=DEB_SHA256)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["subject"] == [{"name": "debian12.qcow2", "digest": {"sha256": "ab" * 32, "sha512": "cd" * 64}},
                             {"name": "debian12.raw", "digest": {"sha256": "ef" * 32}}]
    build = st["predicate"]["buildDefinition"]
    assert build["buildType"] == "https://imagebuild.invalid/build/v1"
    assert build["externalParameters"]["recipe"]["name"] == "debian12"
    deps = {d["name"]: d for d in build["resolvedDependencies"]}
    assert {d["uri"] for d in build["resolvedDependencies"]} >= {_purl(n) for n in INSTALLED}
    assert deps["libc6"]["digest"] == {"sha256": "01" * 32}
    assert deps["bookworm-security InRelease"] == {
        "uri": "http://deb.debian.org/debian-security/dists/bookworm-security/InRelease",
        "name": "bookworm-security InRelease", "digest": {"sha256": "22" * 32}}
    assert deps["qemu-img"]["annotations"] == {"version": "qemu-img version 7.2.22"}
    run = st["predicate"]["runDetails"]
    assert run["metadata"] == {"invocationId": "debian12-20261206T134947-d54cf7",
                               "startedOn": "2026-12-06T13:49:47Z", "finishedOn": "2026-12-06T13:54:30Z"}


def test_provenance_without_dpkg_status_uses_the_manifest_packages():
    st = provenance(make_manifest())
    uris = [d["uri"] for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]]
    assert "pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?distro=debian-12" in uris


def test_boot_test_statement_has_every_cell_and_check():
    st = boot_test(make_manifest())
    assert st["predicateType"] == "https://imagebuild.invalid/boot-test/v1"
    assert st["subject"][0]["digest"]["sha256"] == "ab" * 32
    pred = st["predicate"]
    assert pred["accelerator"] == "tcg" and pred["passed"] is True
    sb = next(c for c in pred["cells"] if c["firmware"] == "secure-boot")
    assert sb == {"cell": "secure-boot/q35", "firmware": "secure-boot", "machine": "q35", "seed": "none",
                  "diskBus": "scsi", "accelerator": "tcg", "passed": True, "seconds": 72.9,
                  "checks": [{"name": "firmware", "ok": True, "skipped": False}]}
    assert [c["cell"] for c in pred["cells"]] == ["bios/pc", "secure-boot/q35"]


def test_boot_test_without_a_result_is_refused():
    manifest = make_manifest()
    del manifest["boot_test"]
    with pytest.raises(AttestationError, match="no boot-test result"):
        boot_test(manifest)


# --- DSSE -----------------------------------------------------------------------------------------------

def test_pae_is_the_dsse_encoding():
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_dsse_round_trip_with_keyid(key):
    statement = provenance(make_manifest(), dpkg_status=DPKG_STATUS)
    envelope = json.loads(sign_statement(statement, key))
    public = load_private_key(key).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert envelope["signatures"][0]["keyid"] == keyid(public) == hashlib.sha256(der).hexdigest()
    assert verify_statement(envelope, key) == statement
    # the public key alone verifies too, as PEM and as an OpenSSH line
    pem = key.with_name("pub.pem")
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ssh = key.with_name("pub.ssh")
    ssh.write_text(public_key_openssh(public) + " builder@example\n")
    assert verify_statement(json.dumps(envelope), pem) == statement == verify_statement(envelope, ssh)


def test_signing_is_deterministic(key):
    statement = boot_test(make_manifest())
    assert sign_statement(statement, key) == sign_statement(copy.deepcopy(statement), key)


def test_payload_edited_after_signing(key):
    envelope = sign_envelope(b'{"_type":"https://in-toto.io/Statement/v1","subject":[]}', key)
    envelope["payload"] = base64.b64encode(b'{"_type":"https://in-toto.io/Statement/v1","subject":[1]}').decode()
    with pytest.raises(SignatureInvalid, match=r"^debian12\.provenance\.json: .*changed after signing"):
        verify_envelope(envelope, key, file="debian12.provenance.json")


def test_signature_changed(key):
    envelope = sign_envelope(b"{}", key)
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(SignatureInvalid, match="changed after signing"):
        verify_envelope(envelope, key, file="x.json")
    envelope["signatures"][0]["sig"] = "not base64!"
    with pytest.raises(SignatureInvalid, match="x.json: .*not valid base64"):
        verify_envelope(envelope, key, file="x.json")
    envelope["signatures"][0]["sig"] = base64.b64encode(b"short").decode()
    with pytest.raises(SignatureInvalid, match="corrupt"):
        verify_envelope(envelope, key, file="x.json")
    with pytest.raises(SignatureInvalid, match="not JSON"):
        verify_envelope("{broken", key, file="x.json")


def test_wrong_key(key, other_key):
    envelope = sign_envelope(b"{}", key)
    with pytest.raises(SignatureInvalid, match=f"no signature by the key in {other_key}"):
        verify_envelope(envelope, other_key, file="x.json")
    envelope["signatures"][0]["keyid"] = ""       # a keyid is optional in DSSE: then it is the signature
    with pytest.raises(SignatureInvalid, match="changed after signing"):
        verify_envelope(envelope, other_key, file="x.json")


@pytest.mark.parametrize("content, message", [
    (None, "key file not found"),
    (b"not a key at all\n", "not a PEM or OpenSSH private key"),
    ("ecdsa", "not ed25519"),
    ("encrypted", "encrypted"),
    ("directory", "is a directory"),
])
def test_bad_key_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "signing.pem"
    if content == "ecdsa":
        path.write_bytes(generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    elif content == "encrypted":
        path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
    elif content == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SigningKeyError, match=f"^{path}: .*{message}") as err:
        sign_envelope(b"{}", path)
    assert isinstance(err.value, ImageBuildError) and err.value.exit_code == 9 and err.value.file == str(path)


def test_openssh_private_key_signs(tmp_path):
    path = tmp_path / "id_ed25519"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    assert verify_envelope(sign_envelope(b"{}", path, payload_type="application/json"), path,
                           payload_type="application/json") == b"{}"


# --- detached signature ---------------------------------------------------------------------------------

def _sums(tmp_path) -> Path:
    path = tmp_path / "SHA256SUMS"
    path.write_text(f"{'ab' * 32}  debian12.qcow2\n{'12' * 32}  manifest.json\n")
    return path


def test_detached_signature_round_trip(tmp_path, key):
    sums = _sums(tmp_path)
    sig = sign_file(sums, key)
    assert sig == tmp_path / "SHA256SUMS.sig"
    assert sig.read_text().startswith("-----BEGIN SSH SIGNATURE-----\n")
    verify_file(sums, key)


def test_detached_signature_tamper(tmp_path, key, other_key):
    sums = _sums(tmp_path)
    sig = sign_file(sums, key)
    original = sig.read_text()
    sums.write_text(sums.read_text().replace("ab", "ac", 1))
    with pytest.raises(SignatureInvalid, match=f"^{sig}: does not match SHA256SUMS"):
        verify_file(sums, key)
    sums = _sums(tmp_path)
    verify_file(sums, key)
    with pytest.raises(SignatureInvalid, match=f"^{sig}: signed by another key"):
        verify_file(sums, other_key)
    lines = original.splitlines()
    body = base64.b64decode("".join(lines[1:-1]))
    flipped = base64.b64encode(body[:-1] + bytes([body[-1] ^ 1])).decode()
    sig.write_text("\n".join([lines[0], flipped, lines[-1]]) + "\n")
    with pytest.raises(SignatureInvalid, match=f"^{sig}: does not match"):
        verify_file(sums, key)
    sig.write_text("garbage\n")
    with pytest.raises(SignatureInvalid, match=f"^{sig}: not an SSH signature"):
        verify_file(sums, key)
    sig.unlink()
    with pytest.raises(SignatureInvalid, match=f"^{sig}: signature file not found"):
        verify_file(sums, key)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_detached_signature_verifies_with_ssh_keygen(tmp_path, key):
    """The point of the SSH format: a user checks SHA256SUMS.sig with the ssh-keygen they have."""
    sums = _sums(tmp_path)
    sig = sign_file(sums, key)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"imagebuild {public_key_openssh(load_private_key(key).public_key())}\n")
    argv = ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "imagebuild", "-n", "file", "-s", str(sig)]
    ok = subprocess.run(argv, input=sums.read_bytes(), capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(argv, input=sums.read_bytes() + b"x", capture_output=True, timeout=30)
    assert bad.returncode != 0

"""write_attestations: what a finished build writes beside its image (SBOMs, provenance and boot-test
statements, SHA256SUMS and its signature), signed and unsigned, reproducible, valid against the formats'
schemas; and the signing key configured and checked before anything starts."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuild.attest import (
    AttestationError,
    SigningKeyError,
    load_private_key,
    public_key_openssh,
    verify_file,
    verify_statement,
)
from imagebuild.attest.outputs import (
    BOOT_TEST,
    CYCLONEDX,
    PROVENANCE,
    SIGNATURE,
    SPDX,
    check_signing_key,
    creation_time,
    write_attestations,
)
from imagebuild.settings import Settings, SettingsError, configure

from .fake_output import make_output, ssh_key
from .test_attest import DPKG_STATUS, SCHEMAS

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(not all(shutil.which(t) for t in ("qemu-img", "ssh-keygen", "sha256sum")),
                                 reason="qemu-img, ssh-keygen and sha256sum are needed")]


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    return ssh_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signed(tmp_path_factory, key):
    return make_output(tmp_path_factory.mktemp("signed") / "debian12", key)


@pytest.fixture
def settings_env(monkeypatch):
    """Install settings read from the given variables (as tasks.py does), undone afterwards."""
    def install(**env: str) -> None:
        configure(Settings.from_environ(env))
    yield install
    configure(None)


def test_a_signed_build_writes_every_file_and_sha256sums_covers_them(signed):
    out, _manifest, result = signed
    names = [p.name for p in result.files]
    assert names == [SPDX, CYCLONEDX, PROVENANCE, BOOT_TEST, SIGNATURE]
    assert result.signed and result.to_data()["statements"] == "dsse" and len(result.keyid or "") == 64
    listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert listed == ["debian12.qcow2", "manifest.json", SPDX, CYCLONEDX, PROVENANCE, BOOT_TEST]
    ok = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_the_signature_over_sha256sums_verifies_with_ssh_keygen(signed, key, tmp_path):
    out, _, _ = signed
    verify_file(out / "SHA256SUMS", key.with_name(key.name + ".pub"))
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"imagebuild {public_key_openssh(load_private_key(key).public_key())}\n")
    res = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "imagebuild", "-n", "file",
                          "-s", str(out / SIGNATURE)], input=(out / "SHA256SUMS").read_bytes(), capture_output=True)
    assert res.returncode == 0, res.stderr


def test_the_statements_are_one_line_dsse_envelopes_about_this_artifact(signed, key):
    out, manifest, _ = signed
    public = key.with_name(key.name + ".pub")
    artifact = manifest["artifact"]
    for name in (PROVENANCE, BOOT_TEST):
        text = (out / name).read_text()
        assert text.count("\n") == 1 and text.endswith("\n")
        statement = verify_statement(text, public, file=name)
        assert statement["subject"] == [
            {"name": "debian12.qcow2", "digest": {"sha256": artifact["sha256"], "sha512": artifact["sha512"]}},
            {"name": "debian12.raw", "digest": {"sha256": artifact["content_sha256"]}}]
    provenance = verify_statement((out / PROVENANCE).read_text(), public)
    assert provenance["predicate"]["buildDefinition"]["externalParameters"]["recipe"] == manifest["recipe"]
    byproducts = {b["name"]: b["digest"]["sha256"] for b in provenance["predicate"]["runDetails"]["byproducts"]}
    assert byproducts == {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in (SPDX, CYCLONEDX)}


def test_the_sboms_validate_against_their_schemas(signed):
    import jsonschema
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    out, manifest, _ = signed
    spdx = json.loads((out / SPDX).read_text())
    jsonschema.validate(spdx, json.loads((SCHEMAS / "spdx-2.3.schema.json").read_text()))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str((out / CYCLONEDX).read_text()) is None
    # their time is the build's, not the clock's: the manifest has no source_date_epoch, so when it finished
    assert spdx["creationInfo"]["created"] == manifest["finished"]
    assert json.loads((out / CYCLONEDX).read_text())["metadata"]["timestamp"].startswith(manifest["finished"][:19])


def test_the_same_build_attested_twice_gives_the_same_bytes(signed, key, tmp_path):
    out, manifest, result = signed
    again = tmp_path / "again"
    again.mkdir()
    for name in ("debian12.qcow2", "manifest.json"):
        shutil.copy(out / name, again / name)
    lines = (out / "SHA256SUMS").read_text().splitlines()[:2]
    (again / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    second = write_attestations(again, manifest, artifact=again / "debian12.qcow2",
                                content_sha256=manifest["artifact"]["content_sha256"], dpkg_status=DPKG_STATUS,
                                key=key, deb_cache=None)
    assert [p.name for p in second.files] == [p.name for p in result.files]
    for name in [p.name for p in result.files] + ["SHA256SUMS"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_source_date_epoch_is_the_documents_time(tmp_path):
    out, _, _ = make_output(tmp_path / "o", None, manifest_changes={"source_date_epoch": 1733443200})
    assert json.loads((out / SPDX).read_text())["creationInfo"]["created"] == "2024-12-06T00:00:00Z"
    assert creation_time({"started": "2026-12-06T13:49:47Z"}) == 1796564987
    with pytest.raises(AttestationError, match="no source_date_epoch, finished or started"):
        creation_time({})


def test_unsigned_the_statements_are_plain_and_nothing_is_signed(tmp_path):
    out, manifest, result = make_output(tmp_path / "o", None)
    assert not result.signed and result.keyid is None and result.to_data()["statements"] == "plain"
    assert not (out / SIGNATURE).exists() and SIGNATURE not in (out / "SHA256SUMS").read_text()
    statement = json.loads((out / PROVENANCE).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1" and "payloadType" not in statement
    assert any("no signing key" in note for note in result.notes)


def test_without_dpkg_database_or_boot_test_those_files_are_left_out_and_said(tmp_path, key):
    out, _, result = make_output(tmp_path / "o", key, dpkg_status=None, boot=False)
    assert [p.name for p in result.files] == [PROVENANCE, SIGNATURE]
    assert not (out / SPDX).exists() and not (out / BOOT_TEST).exists()
    notes = " | ".join(result.notes)
    assert "no dpkg database" in notes and "no SBOM" in notes and "no boot-test attestation" in notes


def test_the_debs_in_the_package_cache_are_digested(tmp_path):
    cache = tmp_path / "apt"
    cache.mkdir()
    (cache / "libc6_2.36-9+deb12u13_amd64.deb").write_bytes(b"libc6 deb")
    out, _, _ = make_output(tmp_path / "o", None, deb_cache=cache)
    packages = {p["name"]: p for p in json.loads((out / SPDX).read_text())["packages"]}
    assert packages["libc6"]["checksums"] == [{"algorithm": "SHA256",
                                               "checksumValue": hashlib.sha256(b"libc6 deb").hexdigest()}]


def test_a_wrong_artifact_or_a_missing_sha256sums_is_refused(signed, tmp_path):
    out, manifest, _ = signed
    with pytest.raises(AttestationError, match="the artifact is other.qcow2 but the manifest names"):
        write_attestations(tmp_path, manifest, artifact=tmp_path / "other.qcow2", content_sha256="0" * 64,
                           dpkg_status=None, key=None)
    with pytest.raises(AttestationError, match="differs from the manifest's"):
        write_attestations(tmp_path, manifest, artifact=out / "debian12.qcow2", content_sha256="0" * 64,
                           dpkg_status=None, key=None)
    with pytest.raises(AttestationError, match=f"^{tmp_path / 'SHA256SUMS'}: not found"):
        write_attestations(tmp_path, manifest, artifact=out / "debian12.qcow2",
                           content_sha256=manifest["artifact"]["content_sha256"], dpkg_status=None, key=None)


# --- the key, configured and checked before anything starts ---------------------------------------------

def test_no_key_configured_means_unsigned(settings_env):
    settings_env()
    assert check_signing_key() is None


def test_the_configured_key_is_loaded_once_up_front(settings_env, key):
    settings_env(IMAGEBUILD_SIGNING_KEY=str(key))
    assert check_signing_key() == key


@pytest.mark.parametrize("what, message", [
    ("missing", "key file not found"),
    ("public", "not a PEM or OpenSSH private key"),
    ("ecdsa", "not ed25519"),
    ("directory", "is a directory"),
])
def test_a_bad_signing_key_is_named(settings_env, tmp_path, key, what, message):
    path = {"missing": tmp_path / "nope", "public": key.with_name(key.name + ".pub"),
            "directory": tmp_path}.get(what) or ssh_key(tmp_path, "id_ecdsa", "ecdsa")
    settings_env(IMAGEBUILD_SIGNING_KEY=str(path))
    with pytest.raises(SigningKeyError, match=f"^{path}: .*{message}") as err:
        check_signing_key()
    assert err.value.exit_code == 9


def test_an_empty_key_variable_is_a_settings_error():
    with pytest.raises(SettingsError, match="IMAGEBUILD_SIGNING_KEY is set but empty: unset it or name a file"):
        Settings.from_environ({"IMAGEBUILD_SIGNING_KEY": " "})
    with pytest.raises(SettingsError, match="did you mean IMAGEBUILD_SIGNING_KEY"):
        Settings.from_environ({"IMAGEBUILD_SIGNNG_KEY": "x"})


def test_the_envelope_signature_is_over_the_statement(signed, key):
    """A DSSE envelope, decoded by hand: the payload is the statement's canonical JSON."""
    out, _, _ = signed
    envelope = json.loads((out / PROVENANCE).read_text())
    payload = base64.b64decode(envelope["payload"])
    assert json.loads(payload)["predicateType"] == "https://slsa.dev/provenance/v1"
    assert payload == json.dumps(json.loads(payload), sort_keys=True, separators=(",", ":")).encode()

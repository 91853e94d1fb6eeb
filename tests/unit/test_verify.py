"""``invoke verify`` offline: a signed build checks out; each tampering (a manifest edited after signing,
a flipped byte in the artifact, a swapped artifact, a corrupt signature, another key, a replaced
statement, a missing manifest) is caught by name, and the task exits 9 with one line, no traceback."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from imagebuild.attest import SignatureInvalid, SigningKeyError, VerifyFailed, sign_file, sign_statement
from imagebuild.attest.outputs import BOOT_TEST, CYCLONEDX, PROVENANCE, SIGNATURE, SPDX, read_sums
from imagebuild.content_digest import content_sha256
from imagebuild.digest import hash_file
from imagebuild.manifest import write_sha256sums
from imagebuild.settings import Settings, configure
from imagebuild.verify import Verified, first_difference, verify

from ..conftest import run_invoke
from .fake_output import make_image, make_output, ssh_key

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(not all(shutil.which(t) for t in ("qemu-img", "ssh-keygen")),
                                 reason="qemu-img and ssh-keygen are needed")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the signing key, its public half, another key's public half)."""
    d = tmp_path_factory.mktemp("keys")
    key, other = ssh_key(d, "signer"), ssh_key(d, "other")
    return key, key.with_name("signer.pub"), other.with_name("other.pub")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, keys) -> Path:
    out, _, _ = make_output(tmp_path_factory.mktemp("pristine") / "debian12", keys[0])
    return out


@pytest.fixture
def signed(pristine, tmp_path) -> Path:
    """A fresh copy of the signed output, for a test to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "debian12"))


@pytest.fixture
def unsigned(tmp_path) -> Path:
    out, _, _ = make_output(tmp_path / "unsigned" / "debian12", None)
    return out


@pytest.fixture(autouse=True)
def no_configured_keys():
    """Whatever the developer's environment holds, the tests' settings name no key unless they say so."""
    configure(Settings.from_environ({}))
    yield
    configure(None)


def resum(out: Path, key: Path | None = None) -> None:
    """What someone who edits the files does next: SHA256SUMS made again (and signed, if they hold the key)."""
    write_sha256sums(out, {name: None for name in read_sums(out / "SHA256SUMS") if (out / name).exists()})
    if key is not None:
        sign_file(out / "SHA256SUMS", key)


def edit_manifest(out: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# --- it checks out ----------------------------------------------------------------------------------------

def test_a_signed_build_verifies(signed, keys):
    result = verify(signed, key=keys[1])
    assert isinstance(result, Verified) and result.signed and result.keyid
    manifest = json.loads((signed / "manifest.json").read_text())
    assert result.sha256 == manifest["artifact"]["sha256"]
    assert result.content_sha256 == manifest["artifact"]["content_sha256"] == content_sha256(
        signed / "debian12.qcow2", "qcow2")
    text = result.summary()
    assert text.startswith(f"{signed}: verified (signed by key {result.keyid[:16]})")
    for name in (SIGNATURE, "SHA256SUMS", PROVENANCE, BOOT_TEST, SPDX, CYCLONEDX):
        assert name in text


def test_the_image_or_the_configured_keys_name_the_same_build(signed, keys):
    assert verify(signed / "debian12.qcow2", key=keys[1]).directory == signed
    configure(Settings.from_environ({"IMAGEBUILD_VERIFY_KEY": str(keys[1])}))
    assert verify(signed).signed
    configure(Settings.from_environ({"IMAGEBUILD_SIGNING_KEY": str(keys[0])}))   # its public half
    assert verify(signed).signed


def test_an_unsigned_build_verifies_as_unsigned(unsigned):
    result = verify(unsigned)
    assert not result.signed and "UNSIGNED" in result.summary()


def test_an_unsigned_build_with_a_key_given_fails(unsigned, keys):
    with pytest.raises(VerifyFailed, match=f"^{unsigned / SIGNATURE}: not found: the output is not signed"):
        verify(unsigned, key=keys[1])


def test_a_signed_build_without_a_key_is_not_passed(signed):
    with pytest.raises(VerifyFailed, match=f"^{signed / SIGNATURE}: .*no public key .* --key"):
        verify(signed)


# --- tampering ----------------------------------------------------------------------------------------

def test_a_manifest_edited_after_signing(signed, keys):
    edit_manifest(signed, lambda m: m["recipe"].update(description="a trusted image"))
    with pytest.raises(VerifyFailed, match=r"manifest.json: its sha256 is \w+, SHA256SUMS lists \w+: changed after"):
        verify(signed, key=keys[1])
    resum(signed)                 # SHA256SUMS made to match, without the key: the signature says no
    with pytest.raises(SignatureInvalid, match=f"^{signed / SIGNATURE}: does not match SHA256SUMS"):
        verify(signed, key=keys[1])


def test_a_manifest_edited_where_nothing_is_signed_is_caught_by_the_provenance(unsigned):
    edit_manifest(unsigned, lambda m: m["recipe"]["image"].update(os_version="13"))
    resum(unsigned)
    with pytest.raises(VerifyFailed, match=rf"^{unsigned / PROVENANCE}: buildDefinition.externalParameters.recipe "
                                           r"differs from manifest.json's recipe at image.os_version: \"12\" here, "
                                           r"\"13\" there"):
        verify(unsigned)


def test_a_flipped_byte_in_the_artifact(signed, keys):
    image = signed / "debian12.qcow2"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x40
    image.write_bytes(bytes(data))
    with pytest.raises(VerifyFailed, match=f"^{image}: its sha256 is .*changed after the build"):
        verify(signed, key=keys[1])


def test_a_swapped_artifact(unsigned, tmp_path):
    """Another image put in its place, SHA256SUMS made again: the manifest's digests tell."""
    image = unsigned / "debian12.qcow2"
    shutil.copy(make_image(tmp_path / "other.qcow2", seed=2), image)
    resum(unsigned)
    with pytest.raises(VerifyFailed, match="manifest.json: debian12.qcow2: the manifest records sha256 .*another"):
        verify(unsigned)


def test_a_swapped_artifact_and_manifest_digests_but_not_its_content(unsigned, tmp_path):
    image = unsigned / "debian12.qcow2"
    shutil.copy(make_image(tmp_path / "other.qcow2", seed=2), image)
    digests = hash_file(image)
    edit_manifest(unsigned, lambda m: m["artifact"].update(sha256=digests["sha256"], sha512=digests["sha512"],
                                                           file_size=image.stat().st_size))
    resum(unsigned)
    with pytest.raises(VerifyFailed, match="the manifest records content_sha256 .*, the image's content is"):
        verify(unsigned)


def test_a_reencoded_artifact_with_the_same_content_is_not_the_attested_file(unsigned, tmp_path):
    """Same guest bytes, another qcow2 encoding, manifest and SHA256SUMS made to match: the statements'
    subject (the file's digest) tells; the content digest alone would not."""
    image = unsigned / "debian12.qcow2"
    plain = tmp_path / "plain.qcow2"
    import subprocess
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(image), str(plain)], check=True)
    assert content_sha256(plain, "qcow2") == content_sha256(image, "qcow2")
    shutil.copy(plain, image)
    digests = hash_file(image)
    edit_manifest(unsigned, lambda m: m["artifact"].update(sha256=digests["sha256"], sha512=digests["sha512"],
                                                           file_size=image.stat().st_size))
    resum(unsigned)
    with pytest.raises(VerifyFailed, match=f"^{unsigned / PROVENANCE}: its subject debian12.qcow2 has sha256 "):
        verify(unsigned)


def test_a_corrupt_signature(signed, keys):
    sig = signed / SIGNATURE
    lines = sig.read_text().splitlines()
    body = bytearray(base64.b64decode("".join(lines[1:-1])))
    body[-5] ^= 1
    sig.write_text("\n".join([lines[0], base64.b64encode(bytes(body)).decode(), lines[-1]]) + "\n")
    with pytest.raises(SignatureInvalid, match=f"^{sig}: does not match SHA256SUMS"):
        verify(signed, key=keys[1])


def test_another_key(signed, keys):
    with pytest.raises(SignatureInvalid, match=f"^{signed / SIGNATURE}: signed by another key than the one in "
                                               f"{keys[2]}"):
        verify(signed, key=keys[2])


def test_a_bad_key_file_is_named(signed, tmp_path):
    with pytest.raises(SigningKeyError, match=f"^{tmp_path / 'nope.pub'}: key file not found"):
        verify(signed, key=tmp_path / "nope.pub")


def test_an_envelope_edited_then_sha256sums_signed_again(signed, keys):
    """Even with SHA256SUMS re-signed (say, by a compromised release step), each envelope is checked."""
    path = signed / PROVENANCE
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["recipe"]["version"] = "13"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope) + "\n")
    resum(signed, keys[0])
    with pytest.raises(SignatureInvalid, match=f"^{path}: .*changed after signing"):
        verify(signed, key=keys[1])


def test_a_statement_signed_by_the_key_but_not_about_this_build(signed, keys):
    path = signed / BOOT_TEST
    statement = json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))
    statement["predicate"]["cells"][1]["passed"] = False
    path.write_text(sign_statement(statement, keys[0]))
    resum(signed, keys[0])
    with pytest.raises(VerifyFailed, match=rf"^{path}: it differs from the statement the manifest's boot_test result "
                                           r"makes at predicate.cells\[1\].passed: false here, true there"):
        verify(signed, key=keys[1])


def test_a_plain_statement_in_place_of_an_envelope(signed, keys):
    path = signed / PROVENANCE
    path.write_text(base64.b64decode(json.loads(path.read_text())["payload"]).decode() + "\n")
    resum(signed, keys[0])
    with pytest.raises(VerifyFailed, match=f"^{path}: a plain statement, not a signed envelope"):
        verify(signed, key=keys[1])


def test_an_attestation_added_after_the_build(unsigned):
    (unsigned / BOOT_TEST).unlink()
    resum(unsigned)
    (unsigned / BOOT_TEST).write_text("{}\n")
    with pytest.raises(VerifyFailed, match=f"{BOOT_TEST} is here but not in SHA256SUMS"):
        verify(unsigned)


def test_an_sbom_whose_packages_are_not_the_manifests(unsigned):
    path = unsigned / CYCLONEDX
    bom = json.loads(path.read_text())
    bom["components"] = [c for c in bom["components"] if c["name"] != "libc6"]
    path.write_text(json.dumps(bom))
    resum(unsigned)
    # the provenance pins the SBOMs' digests (its byproducts), so that is what tells first
    with pytest.raises(VerifyFailed, match=f"^{unsigned / PROVENANCE}: runDetails.byproducts differs .*sbom.cdx.json"):
        verify(unsigned)


def test_the_sbom_check_names_the_packages_that_differ(unsigned):
    from imagebuild.verify import _check_sbom

    sha = json.loads((unsigned / "manifest.json").read_text())["artifact"]["sha256"]
    packages = {("adduser", "3.134"), ("base-files", "12.4+deb12u15"), ("bsdutils", "1:2.38.1-5+deb12u3"),
                ("libc6", "2.36-9+deb12u13"), ("libstdc++6", "12.2.0-14+deb12u1")}
    for name in (SPDX, CYCLONEDX):
        _check_sbom(unsigned / name, name, sha, packages)
        with pytest.raises(VerifyFailed, match=rf"^{unsigned / name}: its packages differ .* not in the manifest: "
                                               r"libc6 2.36-9\+deb12u13; in the manifest but not here: "
                                               r"libc6 2.36-9\+deb12u14"):
            _check_sbom(unsigned / name, name, sha, packages - {("libc6", "2.36-9+deb12u13")}
                        | {("libc6", "2.36-9+deb12u14")})
        with pytest.raises(VerifyFailed, match="names the image by sha256"):
            _check_sbom(unsigned / name, name, "0" * 64, packages)


def test_an_output_directory_without_a_manifest(signed, keys, tmp_path):
    (signed / "manifest.json").unlink()
    with pytest.raises(VerifyFailed, match=f"^{signed}: no manifest.json: not the output directory of a build"):
        verify(signed, key=keys[1])
    with pytest.raises(VerifyFailed, match="no such file or directory"):
        verify(tmp_path / "nothing-here")


def test_an_image_that_is_not_the_builds_artifact(signed, keys):
    other = signed / "copy.qcow2"
    shutil.copy(signed / "debian12.qcow2", other)
    with pytest.raises(VerifyFailed, match=f"^{other}: not the artifact of this build"):
        verify(other, key=keys[1])


def test_the_task_exits_9_with_the_reason_and_no_traceback(signed, keys, invoke_env):
    ok = run_invoke(["verify", str(signed), "--key", str(keys[1])], invoke_env, timeout=120)
    assert ok.returncode == 0 and "verified (signed by key" in ok.stdout, ok.stderr
    edit_manifest(signed, lambda m: m.update(build_id="forged"))
    bad = run_invoke(["verify", str(signed), "--key", str(keys[1])], invoke_env, timeout=120)
    assert bad.returncode == 9
    assert bad.stderr.startswith(f"imagebuild: error: {signed / 'manifest.json'}: its sha256 is ")
    assert "Traceback" not in bad.stderr


def test_first_difference_names_the_path():
    assert first_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == ("a[1].b", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "c": 2}) == ("c", "(missing)", 2)
    assert first_difference([1, 2], [1, 2, 3]) == ("(length)", 2, 3)
    assert first_difference({"x": 1}, {"x": 1.0}) == ("x", 1, 1.0)
    assert first_difference({"x": [1]}, {"x": [1]}) is None

"""Publishing carries the proof (issue 23, item 6), against the real Glance:

- the content and provenance digests as image properties;
- OpenStack image signatures (``img_signature*``), checked three ways: Glance itself verifies the
  signature while it receives the bytes (cursive, with the certificate from the test key manager that
  stands in for Barbican) and refuses a wrong one; and the bytes downloaded back from Glance verify with
  cursive run exactly as Nova runs it (``cursive_verify.py`` in the Glance venv), while one flipped byte
  does not;
- a rebuild whose artifact is byte-identical to the published image sends nothing and reuses it.

A real Barbican is not used: the certificate is a file that the test key manager hands to cursive as
castellan's X509 object, which is what Barbican's key manager returns.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import MakeBuild, glance_conn, recipe_for
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID
from servers import HERE

from imagebuild.attest.outputs import PROVENANCE
from imagebuild.errors import PublishError
from imagebuild.events import Reporter
from imagebuild.publish import UNSIGNED, Options, SigningConfig, publish
from imagebuild.publish.gate import load_published_artifact
from imagebuild.publish.glance import glance_properties
from imagebuild.publish.signing import ImageSigner, ImageSigningError, load_signer, signing_config
from imagebuild.recipe import Glance

SIGNATURE_PROPERTIES = ("img_signature", "img_signature_hash_method", "img_signature_key_type",
                        "img_signature_certificate_uuid")


# --- a throwaway signer ------------------------------------------------------------------------------

def write_signer(directory: Path, *, bits: int = 2048, days: tuple[int, int] = (-1, 30),
                 key: rsa.RSAPrivateKey | None = None, cert_key: rsa.RSAPrivateKey | None = None,
                 cert_uuid: str | None = None) -> SigningConfig:
    """An RSA key (PEM, PKCS#8, unencrypted) and a self-signed certificate for it (``cert_key``: for
    another key), valid from ``days[0]`` to ``days[1]`` days from now."""
    directory.mkdir(parents=True, exist_ok=True)
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=bits)
    cert_key = cert_key or key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagebuild test image signer")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(cert_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + timedelta(days=days[0])).not_valid_after(now + timedelta(days=days[1]))
            .sign(cert_key, hashes.SHA256()))
    (directory / "signing.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "signing.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SigningConfig(key=directory / "signing.key", certificate=directory / "signing.crt",
                         certificate_uuid=cert_uuid or str(uuid.uuid4()))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def cursive_verifies(props: dict, data: bytes, public_key: rsa.RSAPublicKey) -> bool:
    """cursive's verifier re-implemented (``signature_utils.create_verifier_for_pss``,
    ``verifiers.RSAVerifier``): RSA-PSS, MGF1 with the hash, the maximum salt length, over the data's
    digest (``Prehashed``)."""
    assert (props["img_signature_hash_method"], props["img_signature_key_type"]) == ("SHA-256", "RSA-PSS")
    try:
        public_key.verify(base64.b64decode(props["img_signature"], validate=True),
                          hashlib.sha256(data).digest(),
                          padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
                          utils.Prehashed(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# --- fast: the signer, the gate, the properties --------------------------------------------------------

@pytest.mark.unit
def test_the_signature_is_what_cursive_verifies(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    signer = load_signer(write_signer(tmp_path, key=rsa_key))
    data = os.urandom(100_000)
    props = signer.properties(hashlib.sha256(data).hexdigest())
    assert set(props) == set(SIGNATURE_PROPERTIES) and "\n" not in props["img_signature"]
    assert props["img_signature_certificate_uuid"] == signer.certificate_uuid
    assert len(props["img_signature"]) == 344  # 256 bytes, base64: Glance v2 keeps it whole (a TEXT column)
    assert cursive_verifies(props, data, rsa_key.public_key())
    assert not cursive_verifies(props, data[:-1] + bytes([data[-1] ^ 1]), rsa_key.public_key())
    # a digest-sized salt (what some tools default to) is not what cursive accepts: the salt must be the maximum
    short_salt = rsa_key.sign(hashlib.sha256(data).digest(),
                              padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                              utils.Prehashed(hashes.SHA256()))
    assert not cursive_verifies({**props, "img_signature": base64.b64encode(short_salt).decode()}, data,
                                rsa_key.public_key())


def _unusable(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, case: str) -> tuple[SigningConfig, Path]:
    good = write_signer(tmp_path / "good", key=rsa_key)
    if case == "missing key":
        return SigningConfig(tmp_path / "nope.key", good.certificate, good.certificate_uuid), tmp_path / "nope.key"
    if case == "key is a directory":
        return SigningConfig(tmp_path, good.certificate, good.certificate_uuid), tmp_path
    if case == "encrypted key":
        path = tmp_path / "enc.key"
        path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.BestAvailableEncryption(b"secret")))
        return SigningConfig(path, good.certificate, good.certificate_uuid), path
    if case == "not a key":
        path = tmp_path / "garbage.key"
        path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
        return SigningConfig(path, good.certificate, good.certificate_uuid), path
    if case == "EC key":
        path = tmp_path / "ec.key"
        path.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return SigningConfig(path, good.certificate, good.certificate_uuid), path
    if case == "1024-bit key":
        weak = write_signer(tmp_path / "weak", bits=1024)
        return weak, weak.key
    if case == "another key's certificate":
        other = write_signer(tmp_path / "other", key=rsa_key,
                             cert_key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return other, other.certificate
    if case == "expired certificate":
        old = write_signer(tmp_path / "old", key=rsa_key, days=(-30, -1))
        return old, old.certificate
    if case == "certificate not yet valid":
        early = write_signer(tmp_path / "early", key=rsa_key, days=(1, 30))
        return early, early.certificate
    if case == "missing certificate":
        return SigningConfig(good.key, tmp_path / "nope.crt", good.certificate_uuid), tmp_path / "nope.crt"
    if case == "not a certificate":
        return SigningConfig(good.key, good.key, good.certificate_uuid), good.key
    if case == "bad UUID":
        return SigningConfig(good.key, good.certificate, "my-cert"), good.certificate
    raise AssertionError(case)


UNUSABLE = {
    "missing key": "key file not found", "key is a directory": "is a directory", "encrypted key": "encrypted",
    "not a key": "not a PEM or DER private key", "EC key": "EllipticCurve key, not RSA",
    "1024-bit key": "1024-bit RSA key; at least 2048", "another key's certificate": "not the certificate of the key",
    "expired certificate": "expired on", "certificate not yet valid": "not valid before",
    "missing certificate": "certificate file not found", "not a certificate": "not a PEM or DER X.509",
    "bad UUID": "is not a UUID",
}


@pytest.mark.unit
@pytest.mark.parametrize("case", UNUSABLE)
def test_an_unusable_signer_is_refused_naming_the_file_before_anything_starts(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, make_build: MakeBuild, case: str) -> None:
    config, named = _unusable(tmp_path, rsa_key, case)
    with pytest.raises(ImageSigningError, match=UNUSABLE[case]) as caught:
        load_signer(config)
    assert str(caught.value).startswith(f"{named}: ") and caught.value.exit_code == 8
    # through publish: refused before the artifact is even hashed (no store is reached: the cloud is bogus)
    recipe = recipe_for("u-unusable")
    out = make_build(recipe)
    events = tmp_path / "events.jsonl"
    reporter = Reporter(stream=open(os.devnull, "w"))  # noqa: SIM115
    reporter.attach(tmp_path / "publish.log", events)
    with pytest.raises(ImageSigningError, match=UNUSABLE[case]):
        publish(recipe, out, to="glance", options=Options(cloud="no-such-cloud", signing=config),
                reporter=reporter)
    assert '"what": "hash"' not in events.read_text()


@pytest.mark.unit
def test_signing_needs_all_three_settings_or_none(tmp_path: Path) -> None:
    assert signing_config(None, "", None) is None
    with pytest.raises(ImageSigningError, match="missing: certificate, certificate UUID"):
        signing_config(tmp_path / "k", None, None)
    config = signing_config("~/k", tmp_path / "c", "0b5d2c8e-58bd-4c57-a0b1-8a3c5f0e2d11")
    assert config is not None and config.key == Path("~/k").expanduser()


@pytest.mark.unit
def test_publish_takes_the_signing_from_the_settings(tmp_path: Path, make_build: MakeBuild) -> None:
    """``Options.signing`` None: the settings' three values (the fields settings.py is to get; a stand-in
    object here), checked before the artifact is hashed; ``UNSIGNED`` ignores them."""
    from types import SimpleNamespace

    from imagebuild.settings import configure

    recipe = recipe_for("u-settings")
    out = make_build(recipe)
    configure(SimpleNamespace(glance_signing_key=tmp_path / "absent.key",  # type: ignore[arg-type]
                              glance_signing_cert=tmp_path / "absent.crt",
                              glance_signing_cert_uuid="0b5d2c8e-58bd-4c57-a0b1-8a3c5f0e2d11"))
    try:
        with pytest.raises(ImageSigningError, match="absent.key: key file not found"):
            publish(recipe, out, to="glance", options=Options(cloud="no-such-cloud"),
                    reporter=Reporter(stream=open(os.devnull, "w")))  # noqa: SIM115
        with pytest.raises(PublishError) as caught:  # signing off: it gets as far as the (bogus) cloud
            publish(recipe, out, to="glance", options=Options(cloud="no-such-cloud", signing=UNSIGNED),
                    reporter=Reporter(stream=open(os.devnull, "w")))  # noqa: SIM115
        assert not isinstance(caught.value, ImageSigningError) and "no-such-cloud" in str(caught.value)
    finally:
        configure(None)


@pytest.mark.unit
def test_the_proof_beside_the_artifact_becomes_properties(tmp_path: Path, make_build: MakeBuild,
                                                          rsa_key: rsa.RSAPrivateKey) -> None:
    recipe = recipe_for("u-proof")
    out = make_build(recipe, proof=True)
    manifest = json.loads((out / "manifest.json").read_text())
    a = load_published_artifact(out)
    assert a.content_sha256 == manifest["artifact"]["content_sha256"] != a.sha256
    assert a.provenance_sha256 == hashlib.sha256((out / PROVENANCE).read_bytes()).hexdigest()
    signer = load_signer(write_signer(tmp_path, key=rsa_key))
    props = glance_properties(a, recipe.publish.glance, signer)
    assert props["imagebuild_content_sha256"] == a.content_sha256
    assert props["imagebuild_provenance_sha256"] == a.provenance_sha256
    assert cursive_verifies(props, (out / "u-proof.qcow2").read_bytes(), rsa_key.public_key())
    # an output from before the proof: no such properties (absent, not empty), and no signature unasked
    old = glance_properties(load_published_artifact(make_build(recipe)), recipe.publish.glance)
    assert not {"imagebuild_content_sha256", "imagebuild_provenance_sha256", *SIGNATURE_PROPERTIES} & set(old)
    # a recipe cannot bring its own signature
    with pytest.raises(PublishError, match="sets img_signature: image signatures are made by the publish"):
        glance_properties(a, Glance(properties={"img_signature": "AAAA"}), signer)


@pytest.mark.unit
@pytest.mark.parametrize("tamper, message", [
    (lambda out: (out / PROVENANCE).write_text((out / PROVENANCE).read_text() + " "), "changed after the build"),
    (lambda out: (out / "SHA256SUMS").write_text(
        "\n".join(line for line in (out / "SHA256SUMS").read_text().splitlines() if PROVENANCE not in line) + "\n"),
     "not listed in SHA256SUMS: added after the build"),
    (lambda out: (out / PROVENANCE).unlink(), "listed in SHA256SUMS but missing"),
    (lambda out: (out / "SHA256SUMS").write_text("zz" + (out / "SHA256SUMS").read_text()[2:]),
     "SHA256SUMS: line 1 is not 'SHA256  NAME'"),
    (lambda out: (out / "SHA256SUMS").write_text("0" * 64 + "  u-tamper.qcow2\n"), "not the output of one build"),
])
def test_a_provenance_that_is_not_the_builds_is_refused(make_build: MakeBuild, tamper, message: str) -> None:  # type: ignore[no-untyped-def]
    out = make_build(recipe_for("u-tamper"), proof=True)
    tamper(out)
    with pytest.raises(PublishError, match=message):
        load_published_artifact(out)


# --- the real Glance -----------------------------------------------------------------------------------

def quiet(tmp_path: Path, name: str = "publish") -> tuple[Reporter, Path]:
    events = tmp_path / f"{name}.events.jsonl"
    r = Reporter(stream=open(os.devnull, "w"))  # noqa: SIM115
    r.attach(tmp_path / f"{name}.log", events)
    return r, events


def glance_image(glance, image_id: str) -> tuple[dict, bytes]:  # type: ignore[no-untyped-def]
    """The image's properties as Glance returns them, and its bytes downloaded back from Glance."""
    conn = glance_conn(glance)
    try:
        props = conn.image.get(f"/images/{image_id}").json()
        resp = conn.image.get(f"/images/{image_id}/file")
        assert resp.status_code == 200
        return props, resp.content
    finally:
        conn.close()


def nova_verifies(glance, tmp_path: Path, props: dict, data: bytes) -> str:  # type: ignore[no-untyped-def]
    """cursive itself, run as Nova runs it, in the Glance venv (cursive_verify.py)."""
    (tmp_path / "props.json").write_text(json.dumps(props))
    (tmp_path / "data").write_bytes(data)
    proc = subprocess.run([glance.venv / "bin" / "python", HERE / "cursive_verify.py", tmp_path / "props.json",
                           tmp_path / "data"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE),
                               "GLANCE_TEST_CERTS": str(glance.certs_dir)})
    return (proc.stdout.strip().splitlines() or [proc.stderr.strip()[-300:]])[-1]


def images_of(glance, recipe: str) -> list[dict]:  # type: ignore[no-untyped-def]
    conn = glance_conn(glance)
    try:
        return conn.image.get("/images", params={"limit": 1000, "imagebuild_recipe": recipe}).json()["images"]
    finally:
        conn.close()


@pytest.mark.publish
@pytest.mark.parametrize("method", ["upload", "glance-direct"])
def test_a_signed_image_verifies_over_the_bytes_glance_stored(glance, cloud, make_build: MakeBuild,
                                                              tmp_path: Path, method: str) -> None:
    recipe = recipe_for(f"t-signed-{method}", method=method)
    out = make_build(recipe, proof=True, data_mib=2)
    config = write_signer(tmp_path / "signer")
    glance.store_certificate(config.certificate_uuid, config.certificate.read_bytes())  # "in Barbican"
    reporter, _ = quiet(tmp_path)
    result = publish(recipe, out, to="glance", options=Options(cloud=cloud, signing=config), reporter=reporter)
    assert result.created and result.method == method
    assert result.sent_bytes == (out / f"{recipe.name}.qcow2").stat().st_size

    props, data = glance_image(glance, result.image_id)
    manifest = json.loads((out / "manifest.json").read_text())
    assert data == (out / f"{recipe.name}.qcow2").read_bytes()
    assert props["imagebuild_content_sha256"] == manifest["artifact"]["content_sha256"]
    assert props["imagebuild_provenance_sha256"] == hashlib.sha256((out / PROVENANCE).read_bytes()).hexdigest()
    assert (props["img_signature_hash_method"], props["img_signature_key_type"],
            props["img_signature_certificate_uuid"]) == ("SHA-256", "RSA-PSS", config.certificate_uuid)
    # 1. Glance verified it while receiving the bytes (its own log, cursive with the stored certificate)
    assert f"Successfully verified signature for image {result.image_id}" in \
        (glance.dir / "glance-api.log").read_text()
    # 2. Nova's check, cursive itself, over the bytes downloaded back from Glance; one flipped byte fails
    assert nova_verifies(glance, tmp_path, props, data) == "verified"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    assert nova_verifies(glance, tmp_path, props, bytes(flipped)) == "InvalidSignature"
    # 3. and the same with cursive's algorithm re-implemented here, against the certificate's public key
    public = x509.load_pem_x509_certificate(config.certificate.read_bytes()).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert cursive_verifies(props, data, public) and not cursive_verifies(props, bytes(flipped), public)


@pytest.mark.publish
@pytest.mark.parametrize("method", ["upload", "glance-direct"])
@pytest.mark.parametrize("wrong", ["signature over other bytes", "certificate not in the key manager"])
def test_glance_refuses_a_wrong_signature_and_nothing_is_left(glance, cloud, make_build: MakeBuild,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               wrong: str, method: str) -> None:
    recipe = recipe_for(f"t-badsig-{wrong.split()[0]}-{method}", method=method)
    out = make_build(recipe)
    config = write_signer(tmp_path / "signer")
    if wrong == "signature over other bytes":
        glance.store_certificate(config.certificate_uuid, config.certificate.read_bytes())
        real = ImageSigner.sign
        monkeypatch.setattr(ImageSigner, "sign", lambda self, sha256_hex: real(self, "00" * 32))
    reporter, _ = quiet(tmp_path)
    # a plain upload: Glance answers at once, in its words; an import fails later, in its task
    refused = ("Glance refused the image's signature: Signature verification failed for image .*: "
               + ("Signature verification failed" if wrong.startswith("signature") else "Certificate not found"))
    with pytest.raises(PublishError, match=refused if method == "upload" else
                       "Glance's import of image .* failed .* the image is signed"):
        publish(recipe, out, to="glance", options=Options(cloud=cloud, signing=config), reporter=reporter)
    assert images_of(glance, recipe.name) == []  # deleted, although Glance closed the upload's connection


@pytest.mark.publish
def test_a_byte_identical_rebuild_is_a_no_op_that_completes_the_proof(glance, cloud, make_build: MakeBuild,
                                                                       tmp_path: Path) -> None:
    """Build 1 (from before the proof: no content digest, unsigned) is published; build 2, a rebuild whose
    artifact is byte for byte build 1's, with its own build id, manifest and provenance, sends nothing:
    it reuses build 1's image and gives it what it lacked (the content digest, the signature)."""
    recipe = recipe_for("t-rebuild")
    first_out = make_build(recipe, data_mib=2)
    first = publish(recipe, first_out, to="glance", options=Options(cloud=cloud, signing=UNSIGNED),
                    reporter=quiet(tmp_path, "first")[0])
    assert first.created
    stored = glance.images_dir / first.image_id
    stored_stat = stored.stat()

    config = write_signer(tmp_path / "signer")
    glance.store_certificate(config.certificate_uuid, config.certificate.read_bytes())
    second_out = make_build(recipe, proof=True, same_bytes_as=first_out, finished="2026-11-28T07:30:00+00:00")
    assert json.loads((second_out / "manifest.json").read_text())["build_id"] != \
        json.loads((first_out / "manifest.json").read_text())["build_id"]
    reporter, events = quiet(tmp_path, "second")
    second = publish(recipe, second_out, to="glance", options=Options(cloud=cloud, signing=config),
                     reporter=reporter)

    assert not second.created and second.image_id == first.image_id and second.sent_bytes == 0
    assert [i["id"] for i in images_of(glance, recipe.name)] == [first.image_id]  # no second image
    assert os.listdir(glance.images_dir).count(first.image_id) == 1
    assert stored.stat().st_mtime_ns == stored_stat.st_mtime_ns  # the stored bytes were not rewritten
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    assert not [e for e in sent if e.get("type") == "glance-created"
                or (e.get("type") == "progress" and e.get("what") == "upload")]
    assert set(second.updated) == {"imagebuild_content_sha256", *SIGNATURE_PROPERTIES}
    record = json.loads((second_out / "published.jsonl").read_text().splitlines()[-1])
    assert record["reused"] is True and record["created"] is False and record["sent_bytes"] == 0
    assert record["extra"]["image_build_id"] == json.loads((first_out / "manifest.json").read_text())["build_id"]
    props, data = glance_image(glance, first.image_id)
    assert props["imagebuild_build_id"] == record["extra"]["image_build_id"]  # its own provenance stays
    assert props["imagebuild_content_sha256"] == json.loads(
        (second_out / "manifest.json").read_text())["artifact"]["content_sha256"]
    assert nova_verifies(glance, tmp_path, props, data) == "verified"

    # once complete, a third publish of the same bytes changes nothing either
    third = publish(recipe, second_out, to="glance", options=Options(cloud=cloud, signing=config),
                    reporter=quiet(tmp_path, "third")[0])
    assert not third.created and third.updated == () and third.image_id == first.image_id

"""OpenStack image signatures: the ``img_signature*`` properties Glance checks while it receives an image's
bytes, and Nova (``[glance] verify_glance_signatures``) checks again before it boots one.

What is signed, as cursive (the library Glance and Nova share: ``cursive/signature_utils.py``,
``cursive/verifiers.py``) verifies it: the image data, hashed with ``img_signature_hash_method``; the
signature is RSASSA-PSS over that digest (``Prehashed``), mask generation MGF1 with the same hash, salt
length the maximum the key allows (``PSS.MAX_LENGTH``: OpenSSL then requires exactly that length, so a
signature with a digest-sized salt does not verify). ``img_signature`` is that signature in base64 (one
line), ``img_signature_key_type`` is ``RSA-PSS``, and ``img_signature_certificate_uuid`` names the signer's
X.509 certificate in the cloud's key manager (Barbican), where cursive fetches it and takes its public key.

The digest signed is the sha256 the publish gate computed from the artifact file (and matched to the
manifest), with no extra pass over the file; the sha512 of the bytes the upload sends, and Glance's own,
must equal the gate's, taken in the same read, so a file changed in between is caught.

The signer is configured with three things, files and a name (never secrets on a command line): the RSA
private key (PEM or DER, unencrypted: publishing is unattended), its certificate (PEM or DER; the very one stored
in Barbican), and that certificate's Barbican secret UUID, which imagebuild cannot look up itself.
``load_signer`` checks all of it before anything is hashed or sent: a missing, unreadable, encrypted or
non-RSA key, a certificate that is not the key's, expired or not yet valid, or a malformed UUID is an
``ImageSigningError`` naming the file.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from ..errors import PublishError
from ..settings import current

SIGNATURE = "img_signature"
HASH_METHOD = "img_signature_hash_method"
KEY_TYPE = "img_signature_key_type"
CERT_UUID = "img_signature_certificate_uuid"
PROPERTIES = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERT_UUID)

SHA_256 = "SHA-256"  # cursive's name for the hash (HASH_METHODS in signature_utils)
RSA_PSS = "RSA-PSS"
MIN_RSA_BITS = 2048  # below this, NIST SP 800-131A no longer allows signing
MAX_FILE_BYTES = 1 << 20
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ImageSigningError(PublishError):
    """The image-signing key, certificate or certificate UUID is unusable; names the file (exit 8, before
    anything is sent)."""

    def __init__(self, message: str, *, file: Path | str | None = None) -> None:
        self.file = str(file) if file is not None else None
        super().__init__(f"{self.file}: {message}" if self.file else message)


@dataclass(frozen=True)
class SigningConfig:
    """What the user names: the key and certificate files and the certificate's Barbican secret UUID."""
    key: Path
    certificate: Path
    certificate_uuid: str


@dataclass(frozen=True)
class ImageSigner:
    """A checked key and certificate, ready to sign an image's digest."""
    key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate
    certificate_uuid: str
    config: SigningConfig

    def sign(self, sha256_hex: str) -> str:
        """``img_signature`` for data whose sha256 is ``sha256_hex``: base64, one line."""
        digest = bytes.fromhex(sha256_hex)
        if len(digest) != 32:
            raise ValueError(f"not a sha256 digest: {sha256_hex!r}")
        signature = self.key.sign(digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                      salt_length=padding.PSS.MAX_LENGTH),
                                  utils.Prehashed(hashes.SHA256()))
        return base64.b64encode(signature).decode("ascii")

    def properties(self, sha256_hex: str) -> dict[str, str]:
        """The four properties for data whose sha256 is ``sha256_hex``."""
        return {SIGNATURE: self.sign(sha256_hex), HASH_METHOD: SHA_256, KEY_TYPE: RSA_PSS,
                CERT_UUID: self.certificate_uuid}

    @property
    def fingerprint(self) -> str:
        """The certificate's sha256 fingerprint (hex), for messages and records."""
        return self.certificate.fingerprint(hashes.SHA256()).hex()


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageSigningError(f"{what} file not found", file=path) from None
    except IsADirectoryError:
        raise ImageSigningError(f"is a directory, not a {what} file", file=path) from None
    except OSError as exc:
        raise ImageSigningError(f"cannot read the {what} file: {exc.strerror}", file=path) from None
    if len(data) > MAX_FILE_BYTES:
        raise ImageSigningError(f"too large to be a {what} file", file=path)
    return data


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key: PEM (PKCS#1 or PKCS#8, ``openssl genpkey -algorithm RSA``) or DER."""
    data = _read(path, "key")
    try:
        if data.lstrip().startswith(b"-----"):
            key: object = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise ImageSigningError("the key is encrypted; give an unencrypted RSA key (publishing never "
                                "prompts)", file=path) from None
    except (ValueError, binascii.Error):
        raise ImageSigningError("not a PEM or DER private key", file=path) from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for keys it cannot use
        raise ImageSigningError(f"not a usable private key ({type(exc).__name__})", file=path) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        kind = type(key).__name__.removesuffix("PrivateKey").lstrip("_")
        raise ImageSigningError(f"a {kind} key, not RSA (imagebuild signs images with RSA-PSS)", file=path)
    if key.key_size < MIN_RSA_BITS:
        raise ImageSigningError(f"a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits", file=path)
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """An X.509 certificate, PEM or DER (castellan hands Barbican's to cursive as DER)."""
    data = _read(path, "certificate")
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ImageSigningError("not a PEM or DER X.509 certificate", file=path) from None


def _validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    """The certificate's validity period, timezone-aware (cryptography 42 added the ``_utc`` forms and
    deprecated the naive ones; Debian 12 ships 38)."""
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc  # type: ignore[attr-defined,unused-ignore]
    return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def load_signer(config: SigningConfig, *, now: datetime | None = None) -> ImageSigner:
    """Load and check the key, the certificate and the UUID together; raise ``ImageSigningError`` (naming
    the file) for anything Glance or Nova would reject later, so it fails before any upload starts."""
    uuid = config.certificate_uuid.strip().lower()
    if not _UUID.match(uuid):
        raise ImageSigningError(f"the certificate's Barbican secret UUID {config.certificate_uuid!r} is not a "
                                "UUID (openstack secret list shows it as the end of the secret href)",
                                file=config.certificate)
    key = load_private_key(Path(config.key))
    cert = load_certificate(Path(config.certificate))
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.public_numbers() != key.public_key().public_numbers():
        raise ImageSigningError(f"is not the certificate of the key in {config.key}: Glance and Nova would "
                                "reject every signature it makes", file=config.certificate)
    now = now or datetime.now(UTC)
    start, end = _validity(cert)
    if now < start:
        raise ImageSigningError(f"not valid before {start:%Y-%m-%d %H:%M:%S} UTC", file=config.certificate)
    if now > end:
        raise ImageSigningError(f"expired on {end:%Y-%m-%d %H:%M:%S} UTC; Nova's certificate validation "
                                "refuses an expired signer", file=config.certificate)
    return ImageSigner(key=key, certificate=cert, certificate_uuid=uuid, config=config)


def signing_config(key: Path | str | None, certificate: Path | str | None,
                   certificate_uuid: str | None) -> SigningConfig | None:
    """The three settings as one config: all three, or none (unsigned); one or two is an error."""
    given = {"key": key, "certificate": certificate, "certificate UUID": certificate_uuid}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ImageSigningError("signing Glance images needs the key, its certificate and the certificate's "
                                f"Barbican secret UUID; missing: {', '.join(missing)}")
    return SigningConfig(key=Path(str(key)).expanduser(), certificate=Path(str(certificate)).expanduser(),
                         certificate_uuid=str(certificate_uuid))


def configured_signing() -> SigningConfig | None:
    """The signing configured in the settings (``IMAGEBUILD_GLANCE_SIGNING_KEY``, ``..._CERT``,
    ``..._CERT_UUID``), or None."""
    settings = current()
    return signing_config(settings.glance_signing_key, settings.glance_signing_cert,
                          settings.glance_signing_cert_uuid or None)

"""Signing with a local ed25519 key: DSSE envelopes for in-toto statements, and a detached signature
for a file (``SHA256SUMS`` → ``SHA256SUMS.sig``).

DSSE: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md — the signature is over
``PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body``; ``keyid`` is the sha256 of the
public key's DER (SubjectPublicKeyInfo), so a verifier can tell "another key" from "edited".

The detached signature is an SSH signature (``ssh-keygen -Y sign`` format, namespace ``file``), made
here in Python: users verify it with the ``ssh-keygen`` they already have, needing no imagebuild and no
custom format (``ssh-keygen -Y verify -f allowed_signers -I imagebuild -n file -s SHA256SUMS.sig
< SHA256SUMS``, allowed_signers holding ``imagebuild <the line of public_key_openssh()>``).
https://github.com/openssh/openssh-portable/blob/master/PROTOCOL.sshsig

Keyless (sigstore) signing needs Fulcio, Rekor and an OIDC token online: a user who has them signs the
same PAE bytes (``pae()``) with their signer and puts the result in the envelope's ``signatures``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SignatureInvalid, SigningKeyError
from .statement import statement_bytes

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_KEY_BYTES = 64 << 10


# --- keys -----------------------------------------------------------------------------------------------

def _read_key_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except FileNotFoundError:
        raise SigningKeyError("key file not found", file=path) from None
    except IsADirectoryError:
        raise SigningKeyError("is a directory, not a key file", file=path) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read the key file: {exc.strerror}", file=path) from None
    if len(data) > MAX_KEY_BYTES:
        raise SigningKeyError("too large to be a key file", file=path)
    return data


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """An unencrypted ed25519 private key: PEM (PKCS#8, ``openssl genpkey -algorithm ed25519``) or
    OpenSSH (``ssh-keygen -t ed25519 -N ''``)."""
    path = Path(path)
    data = _read_key_file(path)
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key: object = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningKeyError("the key is encrypted; give an unencrypted ed25519 key", file=path) from None
    except (ValueError, binascii.Error):
        raise SigningKeyError("not a PEM or OpenSSH private key", file=path) from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for e.g. an old DSA key
        raise SigningKeyError(f"not a usable private key ({exc.__class__.__name__})", file=path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"a {type(key).__name__.removesuffix('PrivateKey').lstrip('_')} key, "
                              "not ed25519", file=path)
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """An ed25519 public key: PEM, an OpenSSH ``ssh-ed25519 ...`` line, or a private key file."""
    path = Path(path)
    data = _read_key_file(path)
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        if data.lstrip().startswith(b"ssh-"):
            key: object = serialization.load_ssh_public_key(data.strip().split(b"\n")[0])
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error):
        raise SigningKeyError("not a PEM or OpenSSH public key", file=path) from None
    except Exception as exc:
        raise SigningKeyError(f"not a usable public key ({exc.__class__.__name__})", file=path) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"a {type(key).__name__.removesuffix('PublicKey').lstrip('_')} key, "
                              "not ed25519", file=path)
    return key


def keyid(public: Ed25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_key_openssh(public: Ed25519PublicKey) -> str:
    """The ``ssh-ed25519 AAAA...`` line for an allowed_signers file."""
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


# --- DSSE -----------------------------------------------------------------------------------------------

def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_envelope(payload: bytes, key_path: Path | str, *,
                  payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> dict[str, Any]:
    """A DSSE envelope (one signature) over ``payload`` with the ed25519 key in ``key_path``."""
    key = load_private_key(key_path)
    return {"payloadType": payload_type,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": keyid(key.public_key()),
                            "sig": base64.b64encode(key.sign(pae(payload_type, payload))).decode()}]}


def sign_statement(statement: Mapping[str, Any], key_path: Path | str) -> str:
    """The statement signed into a DSSE envelope, as JSON text for a ``*.intoto.jsonl``-style file."""
    return json.dumps(sign_envelope(statement_bytes(statement), key_path), sort_keys=True) + "\n"


def _b64(value: object, what: str, where: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureInvalid(f"the envelope's {what} is not a string", file=where)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid(f"the envelope's {what} is not valid base64", file=where) from None


def verify_envelope(envelope: Mapping[str, Any] | str | bytes, key_path: Path | str, *,
                    file: Path | str = "envelope", payload_type: str | None = IN_TOTO_PAYLOAD_TYPE) -> bytes:
    """The payload, once one of the envelope's signatures verifies with the public key in ``key_path``.
    ``file`` names the envelope in errors. Raises ``SignatureInvalid`` (corrupt, edited after signing,
    or no signature by this key) or ``SigningKeyError``."""
    where = str(file)
    public = load_public_key(key_path)
    if isinstance(envelope, (str, bytes)):
        try:
            envelope = json.loads(envelope)
        except (ValueError, UnicodeDecodeError):
            raise SignatureInvalid("not a DSSE envelope (not JSON)", file=where) from None
    if not isinstance(envelope, Mapping) or not isinstance(envelope.get("signatures"), list):
        raise SignatureInvalid("not a DSSE envelope (no signatures list)", file=where)
    kind = envelope.get("payloadType")
    if not isinstance(kind, str):
        raise SignatureInvalid("not a DSSE envelope (no payloadType)", file=where)
    if payload_type is not None and kind != payload_type:
        raise SignatureInvalid(f"payloadType is {kind!r}, expected {payload_type!r}", file=where)
    payload = _b64(envelope.get("payload"), "payload", where)
    mine = keyid(public)
    message = pae(kind, payload)
    ids = []
    for entry in envelope["signatures"]:
        if not isinstance(entry, Mapping):
            raise SignatureInvalid("a signature entry is not an object", file=where)
        ids.append(str(entry.get("keyid", "")))
        if entry.get("keyid") not in (None, "", mine):
            continue
        sig = _b64(entry.get("sig"), "signature", where)
        if len(sig) != 64:
            raise SignatureInvalid(f"the signature is {len(sig)} bytes, an ed25519 signature is 64: corrupt",
                                   file=where)
        try:
            public.verify(sig, message)
        except InvalidSignature:
            raise SignatureInvalid(f"the signature by key {mine[:16]} does not match the payload: the "
                                   "payload or the signature was changed after signing", file=where) from None
        return payload
    raise SignatureInvalid(f"no signature by the key in {key_path} (keyid {mine[:16]}); signed by "
                           + (", ".join(i[:16] for i in ids) or "nobody"), file=where)


def verify_statement(envelope: Mapping[str, Any] | str | bytes, key_path: Path | str, *,
                     file: Path | str = "envelope") -> dict[str, Any]:
    """The verified in-toto statement from a DSSE envelope."""
    payload = verify_envelope(envelope, key_path, file=file)
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise SignatureInvalid("the signed payload is not JSON", file=file) from None
    if not isinstance(statement, dict) or statement.get("_type") != "https://in-toto.io/Statement/v1":
        raise SignatureInvalid("the signed payload is not an in-toto v1 Statement", file=file)
    return statement


# --- detached SSH signature over a file -----------------------------------------------------------------

SSHSIG_MAGIC = b"SSHSIG"
SSHSIG_NAMESPACE = "file"          # ssh-keygen's own default namespace for files (-n file)
_ARMOR_BEGIN, _ARMOR_END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _ssh_public_blob(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _string(b"ssh-ed25519") + _string(raw)


def _signed_data(data: bytes, namespace: str) -> bytes:
    return (SSHSIG_MAGIC + _string(namespace.encode()) + _string(b"") + _string(b"sha512")
            + _string(hashlib.sha512(data).digest()))


def sign_file(path: Path | str, key_path: Path | str, *, namespace: str = SSHSIG_NAMESPACE) -> Path:
    """Write ``PATH.sig``: an armored SSH signature of the file's bytes. Returns its path."""
    path = Path(path)
    key = load_private_key(key_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureInvalid(f"cannot read the file to sign: {exc.strerror}", file=path) from None
    sig = key.sign(_signed_data(data, namespace))
    blob = (SSHSIG_MAGIC + struct.pack(">I", 1) + _string(_ssh_public_blob(key.public_key()))
            + _string(namespace.encode()) + _string(b"") + _string(b"sha512")
            + _string(_string(b"ssh-ed25519") + _string(sig)))
    text = base64.b64encode(blob).decode()
    lines = [_ARMOR_BEGIN, *(text[i:i + 70] for i in range(0, len(text), 70)), _ARMOR_END]
    out = path.with_name(path.name + ".sig")
    out.write_text("\n".join(lines) + "\n")
    return out


def _take(buf: bytes, pos: int, where: Path) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise SignatureInvalid("the SSH signature is truncated: corrupt", file=where)
    (n,) = struct.unpack(">I", buf[pos:pos + 4])
    if pos + 4 + n > len(buf):
        raise SignatureInvalid("the SSH signature is truncated: corrupt", file=where)
    return buf[pos + 4:pos + 4 + n], pos + 4 + n


def verify_file(path: Path | str, key_path: Path | str, *, signature: Path | str | None = None,
                namespace: str = SSHSIG_NAMESPACE) -> None:
    """Check ``PATH.sig`` (or ``signature``) over the file's bytes with the public key in ``key_path``."""
    path = Path(path)
    sig_path = Path(signature) if signature else path.with_name(path.name + ".sig")
    public = load_public_key(key_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureInvalid(f"cannot read the signed file: {exc.strerror}", file=path) from None
    try:
        text = sig_path.read_text()
    except FileNotFoundError:
        raise SignatureInvalid("signature file not found", file=sig_path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureInvalid(f"cannot read the signature: {getattr(exc, 'strerror', None) or exc}",
                               file=sig_path) from None
    body = text.strip()
    if not (body.startswith(_ARMOR_BEGIN) and body.endswith(_ARMOR_END)):
        raise SignatureInvalid("not an SSH signature (no BEGIN/END SSH SIGNATURE lines)", file=sig_path)
    try:
        blob = base64.b64decode("".join(body[len(_ARMOR_BEGIN):-len(_ARMOR_END)].split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("the SSH signature is not valid base64: corrupt", file=sig_path) from None
    if not blob.startswith(SSHSIG_MAGIC) or blob[6:10] != struct.pack(">I", 1):
        raise SignatureInvalid("not a version-1 SSH signature: corrupt", file=sig_path)
    pos = 10
    signer, pos = _take(blob, pos, sig_path)
    ns, pos = _take(blob, pos, sig_path)
    _reserved, pos = _take(blob, pos, sig_path)
    hash_alg, pos = _take(blob, pos, sig_path)
    wrapped, pos = _take(blob, pos, sig_path)
    kind, inner = _take(wrapped, 0, sig_path)
    raw_sig, _ = _take(wrapped, inner, sig_path)
    if ns.decode(errors="replace") != namespace:
        raise SignatureInvalid(f"signed for namespace {ns.decode(errors='replace')!r}, not {namespace!r}",
                               file=sig_path)
    if kind != b"ssh-ed25519" or hash_alg != b"sha512" or len(raw_sig) != 64:
        raise SignatureInvalid("not an ed25519/sha512 SSH signature: corrupt", file=sig_path)
    if signer != _ssh_public_blob(public):
        raise SignatureInvalid(f"signed by another key than the one in {key_path}", file=sig_path)
    try:
        public.verify(raw_sig, _signed_data(data, namespace))
    except InvalidSignature:
        raise SignatureInvalid(f"does not match {path.name}: the file or the signature was changed after "
                               "signing", file=sig_path) from None

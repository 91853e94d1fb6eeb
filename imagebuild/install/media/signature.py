"""Debian's chain of trust, as apt's: ``dists/<suite>/InRelease`` verified with gpgv against the archive
keyring, and the sha256 it lists for a tree's checksum index (or an ISO's clearsigned checksum list)."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from urllib.parse import urljoin

from ...events import NULL_REPORTER, Reporter
from ...run import run
from .download import fetch_bytes
from .errors import ChecksumMismatch, MediaError, SignatureError

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def dists_split(tree_url: str) -> tuple[str, str] | None:
    """``(".../dists/<suite>/", "path/below/")`` for a tree inside a Debian archive, else None."""
    m = re.match(r"^(.*/dists/[^/]+/)(.*)$", tree_url)
    return (m.group(1), m.group(2)) if m else None


def usable_keyring(keyring: str) -> str:
    """The keyring's path, once it is known to be a file gpgv can read (checked before any download)."""
    keyring = str(Path(keyring).expanduser())
    if not Path(keyring).is_file():
        raise MediaError(f"keyring {keyring} does not exist (install debian-archive-keyring, or set "
                         "install.vm.keyring to the distribution's public key)")
    with open(keyring, "rb") as f:
        if f.read(36).startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK"):
            raise MediaError(f"keyring {keyring} is ASCII-armored, which gpgv cannot read: convert it with "
                             f"`gpg --dearmor < {keyring} > {keyring}.gpg` and name the .gpg file")
    return keyring


def gpgv_verify(signed: bytes, keyring: str, *, reporter: Reporter = NULL_REPORTER,
                what: str = "the archive's InRelease") -> tuple[str, list[str]]:
    """Verify a clearsigned file with gpgv against ``keyring``: (the signed text as gpgv extracted it,
    the good signers). As apt does, one valid signature by a key in the keyring suffices; a signature
    by a key the keyring lacks, or by an expired key, counts for nothing; a bad signature, or one by a
    revoked key, fails."""
    keyring = usable_keyring(keyring)
    with tempfile.TemporaryDirectory(prefix="imagebuild-gpgv-") as tmp:
        src, out = Path(tmp) / "signed", Path(tmp) / "verified"
        src.write_bytes(signed)
        res = run(["gpgv", "--status-fd", "1", "--keyring", keyring, "--output", str(out), str(src)],
                  reporter=reporter, check=False, purpose=f"verify the signature of {what}")
        status = [line.split(" ", 2)[1:] for line in res.stdout.splitlines() if line.startswith("[GNUPG:] ")]
        bad = [rest for kind, *rest in status if kind in ("BADSIG", "REVKEYSIG")]
        # GOODSIG <long key id> <user id>, confirmed by a VALIDSIG <fingerprint ...> of that key
        # (gpgv prints VALIDSIG for an expired key's signature too, after EXPKEYSIG, not GOODSIG).
        fingerprints = [rest[0].split()[0] for kind, *rest in status if kind == "VALIDSIG" and rest]
        good = [uid for kind, *rest in status if kind == "GOODSIG" and rest
                for keyid, _, uid in [rest[0].partition(" ")] if any(f.endswith(keyid) for f in fingerprints)]
        if bad or not good or not out.is_file():
            why = "a bad signature, or one by a revoked key" if bad else f"no valid signature by a key in {keyring}"
            raise SignatureError(f"{what} failed verification: {why}\n{res.stderr.strip()}")
        return out.read_text(errors="replace"), good


def release_sha256(release: str) -> dict[str, str]:
    """The ``SHA256:`` section of a Release file: path -> hex."""
    listed: dict[str, str] = {}
    section = False
    for line in release.splitlines():
        if not line.startswith(" "):
            section = line.rstrip() == "SHA256:"
            continue
        parts = line.split()
        if section and len(parts) == 3 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            listed[parts[2]] = parts[0]
    return listed


def authenticate_index(tree_url: str, index: str, data: bytes, keyring: str, *,
                       reporter: Reporter = NULL_REPORTER, timeout: float = 30.0) -> str:
    """Chain a Debian tree's checksum index to the archive's signed InRelease: gpgv checks InRelease
    against the keyring, and InRelease's SHA256 for the index must be the index's. Returns how it was
    authenticated ("" when the tree is not inside a Debian archive, so there is nothing to chain to)."""
    split = dists_split(tree_url)
    if split is None:
        reporter.log(f"{tree_url} is not inside a dists/<suite>/ tree: {index} cannot be authenticated")
        return ""
    dists, below = split
    release_url = urljoin(dists, "InRelease")
    keyring = usable_keyring(keyring)
    text, signers = gpgv_verify(fetch_bytes(release_url, timeout=timeout), keyring, reporter=reporter)
    path = below + index
    listed = release_sha256(text).get(path)
    if listed is None:
        raise MediaError(f"{release_url} lists no sha256 for {path}: the tree is not part of that release")
    digest = hashlib.sha256(data).hexdigest()
    if digest != listed:
        raise ChecksumMismatch(f"{urljoin(tree_url, index)} has sha256 {digest}, but the signed {release_url} "
                               f"lists {listed}: the mirror serves an index the archive did not sign")
    reporter.info(f"{index} authenticated: its sha256 is in {release_url}, signed by {signers[0]}")
    return f"{release_url} (gpgv: {signers[0]})"

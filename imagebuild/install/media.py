"""Install media: download with resume into a content-addressed cache, verify on every use, and find the
installer kernel and initrd of an install tree (``.treeinfo`` for EL, the netboot layout for Debian).

The recipe pins the sha256 of every file a build boots (``install.vm.kernel_sha256``/``initrd_sha256``);
that pin is the trust anchor, whatever mirror serves the file. The tree's own checksum list (the
``[checksums]`` of ``.treeinfo``, Debian's ``SHA256SUMS``) is checked against the pin as well, before
the large download starts, so a moved tree is reported as such.

Cache layout (``media_cache_dir()``: ``media/`` under :func:`imagebuild.paths.cache_root`)::

    sha256/<hex>/<name>        a verified file; re-hashed on every use
    sha256/<hex>/<name>.part   a download in progress or interrupted: resumed, never used as is
    sha256/<hex>/.lock         serializes builds fetching the same file

A file is renamed from ``.part`` to its final name only after its sha256 matched; a mismatch deletes
the partial download.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

from ..digest import sha256_file
from ..errors import InstallFailed
from ..events import NULL_REPORTER, Reporter
from ..mirrors import rewrite_url, site_mirrors  # noqa: F401 - site_mirrors is re-exported
from ..paths import cache_root
from ..recipe import Recipe
from ..run import run

USER_AGENT = "imagebuild/0.1 (+golden image builder)"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
MAX_INDEX_BYTES = 1 << 20           # .treeinfo / SHA256SUMS are a few KiB

# Where an install tree keeps the installer's kernel and initrd when the recipe does not say.
EL_KERNEL = "images/pxeboot/vmlinuz"
EL_INITRD = "images/pxeboot/initrd.img"
DEBIAN_KERNEL = "netboot/debian-installer/amd64/linux"
DEBIAN_INITRD = "netboot/debian-installer/amd64/initrd.gz"
DEBIAN_ISO_KERNEL = "install.amd/vmlinuz"   # on a debian-cd netinst/DVD image
DEBIAN_ISO_INITRD = "install.amd/initrd.gz"
def tree_index(recipe: Recipe) -> str:
    """The tree's checksum index follows the installer: anaconda trees have .treeinfo, d-i SHA256SUMS."""
    from ..answerfile import AnswerFileKind, answer_file_kind
    return ".treeinfo" if answer_file_kind(recipe) is AnswerFileKind.KICKSTART else "SHA256SUMS"


class MediaError(InstallFailed):
    """Install media could not be fetched, or is not what the recipe pins."""


class SignatureError(MediaError):
    """A signed index (Debian's InRelease) did not verify against the keyring."""


class ChecksumMismatch(MediaError):
    """A file's sha256 is not the pinned one (the partial download has been deleted)."""


# -- configuration -------------------------------------------------------------------------------

def media_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    return cache_root(environ) / "media"


# -- hashing and downloading ---------------------------------------------------------------------

def _file_name(url: str) -> str:
    name = PurePosixPath(urlsplit(url).path).name
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "download"


@contextlib.contextmanager
def _locked(path: Path, reporter: Reporter) -> Iterator[None]:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.info(f"waiting for another build fetching the same file ({path.parent.name[:12]})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"^bytes (\d+)-\d+/(\d+|\*)$", (value or "").strip())
    return int(m.group(1)) if m else None


class _Incomplete(Exception):
    pass


def _download(url: str, part: Path, *, reporter: Reporter, timeout: float, attempts: int,
              retry_delay: float = 1.0) -> None:
    """Download ``url`` into ``part``, resuming from what ``part`` already holds (HTTP Range)."""
    for attempt in range(1, attempts + 1):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                status = resp.status or 200     # file:// has no status
                if status == 206 and _content_range_start(resp.headers.get("Content-Range")) == offset:
                    mode = "ab"
                    reporter.log(f"resuming {url} at byte {offset}")
                elif status == 206:
                    part.unlink(missing_ok=True)  # an answer to some other range: start over
                    raise _Incomplete("the server answered a different byte range")
                elif status == 200:
                    mode, offset = "wb", 0        # the server ignored the Range: start over
                else:
                    raise MediaError(f"cannot download {url}: unexpected HTTP status {status}")
                length = resp.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else None
                done = offset
                next_report = time.monotonic() + 5
                with open(part, mode) as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        if time.monotonic() >= next_report:
                            next_report = time.monotonic() + 5
                            reporter.event("download", url=url, bytes=done, total=total)
                            of = f" of {total >> 20} MiB" if total else ""
                            reporter.log(f"  {url}: {done >> 20} MiB{of}")
                    f.flush()
                    os.fsync(f.fileno())
                if total is not None and done < total:
                    raise _Incomplete(f"connection closed after {done} of {total} bytes")
                reporter.event("download", url=url, bytes=done, total=total, state="done")
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                return  # nothing left to send: the partial file is whole (the checksum decides)
            if exc.code in (408, 429, 500, 502, 503, 504) and attempt < attempts:
                reason = f"HTTP {exc.code}"
            else:
                raise MediaError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, _Incomplete) as exc:
            reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            if attempt == attempts:
                raise MediaError(f"cannot download {url}: {reason} (gave up after {attempts} attempts; "
                                 "the partial download is kept and resumed next time)") from None
        delay = retry_delay * 2 ** (attempt - 1)
        reporter.info(f"download of {_file_name(url)} interrupted ({reason}); resuming in {delay:.0f}s")
        time.sleep(delay)


def fetch(url: str, sha256: str, *, cache_dir: Path | None = None, reporter: Reporter = NULL_REPORTER,
          timeout: float = 60.0, attempts: int = 4, retry_delay: float = 1.0) -> Path:
    """Return the cached, verified copy of ``url`` whose sha256 must be ``sha256``.

    A cached copy is re-hashed on every call (a corrupt one is fetched again). A new download goes to
    ``<name>.part`` (resumed if an earlier one was interrupted) and is renamed only once its sha256
    matches; on a mismatch it is deleted and ``ChecksumMismatch`` raised.
    """
    if not SHA256_RE.match(sha256 or ""):
        raise MediaError(f"{url}: no sha256 pinned (got {sha256!r}); a build uses only pinned media")
    root = cache_dir if cache_dir is not None else media_cache_dir()
    slot = root / "sha256" / sha256
    slot.mkdir(parents=True, exist_ok=True)
    name = _file_name(url)
    final = slot / name
    with _locked(slot / ".lock", reporter):
        if final.exists():
            actual = sha256_file(final)
            if actual == sha256:
                reporter.log(f"{name}: cached copy verified (sha256 {sha256})")
                return final
            reporter.info(f"cached {final} is corrupt (sha256 {actual}); fetching it again")
            final.unlink()
        part = slot / (name + ".part")
        resumed = part.exists() and part.stat().st_size > 0
        reporter.info(f"downloading {url}" + (" (resuming)" if resumed else ""))
        while True:
            _download(url, part, reporter=reporter, timeout=timeout, attempts=attempts,
                      retry_delay=retry_delay)
            actual = sha256_file(part)
            if actual == sha256:
                os.replace(part, final)
                return final
            part.unlink()
            if not resumed:
                break
            # The kept part may have come from an older copy of the file: try once from byte 0.
            reporter.info(f"{name}: the resumed download does not match; downloading it whole again")
            resumed = False
    raise ChecksumMismatch(f"{url}: sha256 is {actual}, but the recipe pins {sha256}; the download was "
                           "deleted (the mirror serves a different file, or the pin is wrong)")


def fetch_bytes(url: str, *, timeout: float = 30.0, max_bytes: int = MAX_INDEX_BYTES) -> bytes:
    """A small file (``.treeinfo``, ``SHA256SUMS``, ``InRelease``), read into memory; not cached."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}),
                                    timeout=timeout) as resp:
            data: bytes = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise MediaError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise MediaError(f"cannot download {url}: {getattr(exc, 'reason', None) or exc}") from None
    if len(data) > max_bytes:
        raise MediaError(f"{url} is larger than {max_bytes} bytes; it is not an install tree index")
    return data


# -- signed indexes (Debian: dists/<suite>/InRelease) --------------------------------------------

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


# -- install trees -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TreeInfo:
    """What an EL tree's ``.treeinfo`` says (the old format and productmd's 1.x both)."""
    family: str
    version: str
    arch: str
    kernel: str | None
    initrd: str | None
    stage2: str | None
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (algorithm, hex)

    def sha256(self, path: str) -> str | None:
        algo, digest = self.checksums.get(path, ("", ""))
        return digest if algo == "sha256" else None


def parse_treeinfo(text: str, *, arch: str = "x86_64", source: str = ".treeinfo") -> TreeInfo:
    cp = configparser.RawConfigParser(strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive paths
    try:
        cp.read_string(text, source)
    except configparser.Error as exc:
        raise MediaError(f"{source} is not a valid .treeinfo: {exc}") from None

    def get(section: str, key: str) -> str | None:
        value = cp.get(section, key, fallback=None)
        return value.strip() if value and value.strip() else None

    tree_arch = get("tree", "arch") or get("general", "arch") or arch
    if tree_arch != arch:
        raise MediaError(f"{source} describes an {tree_arch} tree, not {arch}")
    section = f"images-{arch}"
    if not cp.has_section(section):
        raise MediaError(f"{source} has no [{section}] section: not an installable {arch} tree")
    checksums: dict[str, tuple[str, str]] = {}
    if cp.has_section("checksums"):
        for path, value in cp.items("checksums"):
            algo, sep, digest = value.partition(":")
            if sep:
                checksums[path] = (algo.strip().lower(), digest.strip().lower())
    return TreeInfo(
        family=get("general", "family") or get("release", "name") or "",
        version=get("general", "version") or get("release", "version") or "",
        arch=tree_arch,
        kernel=get(section, "kernel"),
        initrd=get(section, "initrd"),
        stage2=get("stage2", "mainimage"),
        checksums=checksums,
    )


def parse_sha256sums(text: str) -> dict[str, str]:
    """``sha256sum`` output (Debian's installer ``SHA256SUMS``): path (without ``./``) -> hex."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(?:\./)?(\S.*)$", line.strip())
        if m:
            sums[m.group(2)] = m.group(1).lower()
    return sums


def _tree_url(recipe: Recipe, mirrors: Mapping[str, str] | None) -> str:
    url = rewrite_url(recipe.install.vm.tree_url, mirrors)
    return url if url.endswith("/") else url + "/"


def boot_file_paths(recipe: Recipe) -> tuple[str, str]:
    """The kernel and initrd paths inside the tree: the recipe's, else the family's usual layout."""
    vm = recipe.install.vm
    if tree_index(recipe) == ".treeinfo":
        return vm.kernel or EL_KERNEL, vm.initrd or EL_INITRD
    if vm.iso_url:
        return vm.kernel or DEBIAN_ISO_KERNEL, vm.initrd or DEBIAN_ISO_INITRD
    return vm.kernel or DEBIAN_KERNEL, vm.initrd or DEBIAN_INITRD


@dataclass(frozen=True)
class BootFile:
    role: str                    # "kernel" or "initrd"
    path: str                    # inside the tree
    url: str
    sha256: str                  # the recipe's pin ("" when not pinned)
    listed_sha256: str | None    # what the tree's index (.treeinfo / SHA256SUMS) says, if anything
    signed_by: str = ""          # the signed file that vouches for that index, if any (Debian InRelease)


@dataclass(frozen=True)
class BootMedia:
    """The verified installer kernel and initrd in the cache, ready to boot."""
    kernel: Path
    initrd: Path
    kernel_url: str
    initrd_url: str
    checksum_source: str         # which index was cross-checked, or "" if the tree had none
    kernel_sha256: str = ""      # what was verified (the pin, the signed index, or the first-use record)
    initrd_sha256: str = ""
    signed_by: str = ""          # the signed file that vouched for the tree's index, if any
    iso: Path | None = None      # the verified install ISO (attached as the CD-ROM), when installing from one
    iso_sha256: str = ""


def resolve_boot_files(recipe: Recipe, *, mirrors: Mapping[str, str] | None = None,
                       reporter: Reporter = NULL_REPORTER, timeout: float = 30.0
                       ) -> tuple[BootFile, BootFile, str]:
    """Read the tree's index and cross-check it with the pins before anything large is downloaded.

    Returns (kernel, initrd, index name or "" when the tree has none and the recipe names the paths).
    """
    vm = recipe.install.vm
    tree = _tree_url(recipe, mirrors)
    index = tree_index(recipe)
    kernel_path, initrd_path = boot_file_paths(recipe)
    listed: dict[str, str] = {}
    raw = b""
    try:
        raw = fetch_bytes(urljoin(tree, index), timeout=timeout)
        text = raw.decode("utf-8", errors="replace")
    except MediaError as exc:
        if "HTTP 404" not in str(exc) or not (vm.kernel and vm.initrd):
            raise
        reporter.info(f"the tree has no {index}; relying on the recipe's pins alone")
        index, text = "", ""
    if index == ".treeinfo":
        info = parse_treeinfo(text, source=urljoin(tree, index))
        for role, mine, theirs in (("kernel", vm.kernel, info.kernel), ("initrd", vm.initrd, info.initrd)):
            if mine and theirs and mine != theirs:
                reporter.info(f"warning: the recipe boots {mine} but .treeinfo names {theirs} as the {role}")
        kernel_path = vm.kernel or info.kernel or kernel_path
        initrd_path = vm.initrd or info.initrd or initrd_path
        listed = {p: d for p in (kernel_path, initrd_path) if (d := info.sha256(p) or "")}
    elif index == "SHA256SUMS":
        listed = parse_sha256sums(text)
    signed_by = ""
    if index == "SHA256SUMS":
        try:
            signed_by = authenticate_index(tree, index, raw, vm.keyring or DEBIAN_KEYRING,
                                           reporter=reporter, timeout=timeout)
        except (SignatureError, ChecksumMismatch):
            raise  # evidence of tampering (or of the wrong keyring): never build on it
        except MediaError as exc:
            if vm.media_trust == "signed":
                raise
            reporter.info(f"warning: {exc}; relying on the recipe's pins")
    if vm.media_trust == "signed" and not signed_by:
        raise MediaError(f"install.vm.media_trust = 'signed' needs a tree whose checksum index is signed "
                         f"(a Debian dists/<suite>/ tree with InRelease); {tree} has none")
    files = []
    wanted = (("kernel", kernel_path, vm.kernel_sha256), ("initrd", initrd_path, vm.initrd_sha256))
    for role, path, pin in wanted:
        bf = BootFile(role, path, urljoin(tree, path), pin, listed.get(path), signed_by)
        if bf.sha256 and bf.listed_sha256 and bf.sha256 != bf.listed_sha256:
            raise ChecksumMismatch(
                f"the tree's {index} lists sha256 {bf.listed_sha256} for {path}, but the recipe pins "
                f"{bf.sha256} (install.vm.{role}_sha256): the tree has changed or the pin is wrong")
        if index and not bf.listed_sha256:
            reporter.log(f"{index} has no sha256 for {path}; relying on the recipe's pin alone")
        files.append(bf)
    return files[0], files[1], index if listed else ""


def fetch_boot_files(recipe: Recipe, *, cache_dir: Path | None = None,
                     mirrors: Mapping[str, str] | None = None, reporter: Reporter = NULL_REPORTER,
                     timeout: float = 60.0, scratch: Path | None = None) -> BootMedia:
    """Fetch (or take from the cache, re-verified) the installer kernel and initrd a recipe boots.

    Unpinned media are refused, unless the recipe opts into ``install.vm.media_trust = "first-use"``:
    then the first download's sha256 is recorded in the cache (``first-use-pins.json``) and every later
    build verifies against it, as SSH does with host keys; the manifest records the hash either way.
    """
    root = cache_dir if cache_dir is not None else media_cache_dir()
    if recipe.install.vm.iso_url:
        if scratch is None:
            raise ValueError("an ISO install needs a scratch dir for the kernel and initrd read out of it")
        return _boot_from_iso(recipe, root, scratch, mirrors=mirrors, reporter=reporter, timeout=timeout)
    kernel, initrd, source = resolve_boot_files(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
    resolved = []
    trust = recipe.install.vm.media_trust
    for bf in (kernel, initrd):
        if not bf.sha256 and trust == "signed":
            if not bf.listed_sha256:
                raise MediaError(f"the signed {source} lists no sha256 for {bf.path}: nothing vouches for it")
            reporter.info(f"{bf.role} {bf.path}: sha256 {bf.listed_sha256} from the signed {source}")
            bf = dataclasses.replace(bf, sha256=bf.listed_sha256)
        if not bf.sha256:
            if trust != "first-use":
                hint = f" The tree's {source} lists {bf.listed_sha256}." if bf.listed_sha256 else ""
                raise MediaError(f"install.vm.{bf.role}_sha256 is not pinned: a build boots only pinned "
                                 f"media.{hint} Verify the value (pin_boot_files downloads and hashes it) "
                                 "and write it into the recipe.")
            bf = _first_use(bf, root, reporter=reporter, timeout=timeout)
        resolved.append(bf)
    paths = [fetch(bf.url, bf.sha256, cache_dir=root, reporter=reporter, timeout=timeout) for bf in resolved]
    return BootMedia(paths[0], paths[1], kernel.url, initrd.url, source, resolved[0].sha256, resolved[1].sha256,
                     kernel.signed_by)


def _first_use(bf: BootFile, root: Path, *, reporter: Reporter, timeout: float) -> BootFile:
    import json
    store = root / "first-use-pins.json"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".first-use.lock", reporter):
        pins = json.loads(store.read_text()) if store.exists() else {}
        if bf.url in pins:
            reporter.info(f"warning: {bf.role} {bf.url} is not pinned in the recipe; verifying against the "
                          f"sha256 recorded at its first use ({pins[bf.url]})")
            return dataclasses.replace(bf, sha256=pins[bf.url])
        digest = _download_unverified(bf, root, reporter=reporter, timeout=timeout, source="")
        pins[bf.url] = digest
        tmp = store.with_suffix(".partial")
        tmp.write_text(json.dumps(pins, indent=2, sort_keys=True))
        os.replace(tmp, store)
    reporter.info(f"warning: {bf.role} {bf.url} is not pinned in the recipe; trusting it on first use and "
                  f"recording sha256 {digest} (pin it in the recipe: install.vm.{bf.role}_sha256)")
    return dataclasses.replace(bf, sha256=digest)


def _download_unverified(bf: BootFile, root: Path, *, reporter: Reporter, timeout: float, source: str) -> str:
    """Download a file with no pin into the cache under its own hash; returns the hash."""
    scratch = root / "unverified"
    scratch.mkdir(parents=True, exist_ok=True)
    part = scratch / f"{uuid.uuid4().hex}-{_file_name(bf.url)}.part"
    try:
        _download(bf.url, part, reporter=reporter, timeout=timeout, attempts=4)
        digest = sha256_file(part)
        if bf.listed_sha256 and digest != bf.listed_sha256:
            raise ChecksumMismatch(f"{bf.url}: sha256 is {digest}, but the tree's {source or 'index'} lists "
                                   f"{bf.listed_sha256}; the download was deleted")
        slot = root / "sha256" / digest
        slot.mkdir(parents=True, exist_ok=True)
        with _locked(slot / ".lock", reporter):
            os.replace(part, slot / _file_name(bf.url))
    finally:
        part.unlink(missing_ok=True)
    return digest


def pin_boot_files(recipe: Recipe, *, cache_dir: Path | None = None,
                   mirrors: Mapping[str, str] | None = None, reporter: Reporter = NULL_REPORTER,
                   timeout: float = 60.0) -> dict[str, str]:
    """Download the kernel and initrd without pins and return their sha256 for a person to verify.

    Returns ``{"kernel_sha256": ..., "initrd_sha256": ...}`` (TOML-ready). A value that disagrees with
    the tree's own checksum list raises ``ChecksumMismatch``. The files land in the cache under their
    hash, so the first pinned build does not download them again.
    """
    root = cache_dir if cache_dir is not None else media_cache_dir()
    if recipe.install.vm.iso_url:
        src = resolve_iso(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
        digest = _download_unverified(BootFile("iso", _file_name(src.url), src.url, "", src.listed_sha256 or None),
                                      root, reporter=reporter, timeout=timeout,
                                      source=recipe.install.vm.iso_checksums_url)
        origin = f" (matches the signed {src.signed_by})" if src.signed_by else " (no signed checksum list)"
        reporter.info(f"ISO {src.url}: sha256 {digest}{origin}")
        return {"iso_sha256": digest}
    kernel, initrd, source = resolve_boot_files(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
    pins: dict[str, str] = {}
    for bf in (kernel, initrd):
        digest = _download_unverified(bf, root, reporter=reporter, timeout=timeout, source=source)
        origin = f" (matches the tree's {source})" if bf.listed_sha256 else " (the tree lists no checksum)"
        if bf.signed_by and bf.listed_sha256:
            origin = f" (matches the tree's {source}, whose sha256 is in the signed {bf.signed_by})"
        reporter.info(f"{bf.role} {bf.url}: sha256 {digest}{origin}")
        pins[f"{bf.role}_sha256"] = digest
    return pins


# -- install ISOs --------------------------------------------------------------------------------

@dataclass(frozen=True)
class IsoSource:
    url: str
    sha256: str          # what the download is held to: the pin, or the signed list's under "signed"; "" = none
    listed_sha256: str   # what the signed checksum list says ("" without one)
    signed_by: str       # that list and its signer


def resolve_iso(recipe: Recipe, *, mirrors: Mapping[str, str] | None = None,
                reporter: Reporter = NULL_REPORTER, timeout: float = 30.0) -> IsoSource:
    """The ISO's pin, checked against the distribution's clearsigned checksum list when the recipe
    names one (``install.vm.iso_checksums_url``), before the large download starts."""
    vm = recipe.install.vm
    url = rewrite_url(vm.iso_url, mirrors)
    pin, signed_by, listed = vm.iso_sha256, "", ""
    if vm.iso_checksums_url:
        sums_url = rewrite_url(vm.iso_checksums_url, mirrors)
        keyring = usable_keyring(vm.keyring or DEBIAN_KEYRING)
        text, signers = gpgv_verify(fetch_bytes(sums_url, timeout=timeout), keyring, reporter=reporter,
                                    what=sums_url)
        name = _file_name(url)
        listed = parse_sha256sums(text).get(name, "")
        if not listed:
            raise MediaError(f"the signed {sums_url} lists no sha256 for {name}")
        if pin and pin != listed:
            raise ChecksumMismatch(f"the signed {sums_url} lists sha256 {listed} for {name}, but the recipe "
                                   f"pins {pin} (install.vm.iso_sha256): the ISO or the pin is wrong")
        signed_by = f"{sums_url} (gpgv: {signers[0]})"
        reporter.info(f"{name}: sha256 {listed} is in {sums_url}, signed by {signers[0]}")
        if not pin and vm.media_trust == "signed":
            pin = listed
    elif vm.media_trust == "signed":
        raise MediaError("install.vm.media_trust = 'signed' with an ISO needs install.vm.iso_checksums_url "
                         "(the distribution's clearsigned checksum list)")
    return IsoSource(url, pin, listed, signed_by)


def extract_from_iso(iso: Path, members: Mapping[str, str], dest: Path, *,
                     reporter: Reporter = NULL_REPORTER) -> dict[str, Path]:
    """Copy files out of an ISO 9660 image with xorriso (no mount, no loop device): ``{name: path in
    the ISO}`` -> ``{name: file under dest}``."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = ["xorriso", "-osirrox", "on", "-indev", str(iso)]
    out = {}
    for name, member in members.items():
        out[name] = dest / name
        out[name].unlink(missing_ok=True)
        argv += ["-extract", "/" + member.lstrip("/"), str(out[name])]
    res = run(argv, reporter=reporter, check=False, purpose="read the installer's kernel and initrd out of the ISO")
    missing = [members[n] for n, p in out.items() if not p.is_file()]
    if res.returncode != 0 or missing:
        raise MediaError(f"{iso.name} has no {', '.join(missing) or 'readable files'} "
                         f"(set install.vm.kernel / install.vm.initrd to their paths in the ISO)")
    for p in out.values():
        p.chmod(0o644)  # ISO files are read-only; the build dir must stay removable
    return out


def _boot_from_iso(recipe: Recipe, root: Path, scratch: Path, *, mirrors: Mapping[str, str] | None,
                   reporter: Reporter, timeout: float) -> BootMedia:
    src = resolve_iso(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
    url, pin, signed_by = src.url, src.sha256, src.signed_by
    if not pin:
        if recipe.install.vm.media_trust != "first-use":
            raise MediaError("install.vm.iso_sha256 is not pinned: a build boots only pinned media. Verify "
                             "the ISO's sha256 (`invoke pin` prints it) and write it into the recipe.")
        pin = _first_use(BootFile("iso", _file_name(url), url, "", src.listed_sha256 or None), root,
                         reporter=reporter, timeout=timeout).sha256
    iso = fetch(url, pin, cache_dir=root, reporter=reporter, timeout=timeout)
    kernel_path, initrd_path = boot_file_paths(recipe)
    files = extract_from_iso(iso, {"iso-kernel": kernel_path, "iso-initrd": initrd_path}, scratch,
                             reporter=reporter)
    return BootMedia(files["iso-kernel"], files["iso-initrd"], f"{url}!/{kernel_path}", f"{url}!/{initrd_path}",
                     "iso", hashlib.sha256(files["iso-kernel"].read_bytes()).hexdigest(),
                     hashlib.sha256(files["iso-initrd"].read_bytes()).hexdigest(), signed_by, iso, pin)

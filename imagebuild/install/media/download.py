"""Downloading into the content-addressed media cache: resumed over HTTP Range, locked per file, renamed
into place only once the sha256 matches, re-hashed on every use; and small index files read into memory.

Cache layout (``media_cache_dir()``: ``media/`` under :func:`imagebuild.paths.cache_root`)::

    sha256/<hex>/<name>        a verified file; re-hashed on every use
    sha256/<hex>/<name>.part   a download in progress or interrupted: resumed, never used as is
    sha256/<hex>/.lock         serializes builds fetching the same file

A file is renamed from ``.part`` to its final name only after its sha256 matched; a mismatch deletes
the partial download.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ...digest import sha256_file
from ...events import NULL_REPORTER, Reporter
from ...paths import cache_root
from .errors import ChecksumMismatch, MediaError

USER_AGENT = "imagebuild/0.1 (+golden image builder)"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
MAX_INDEX_BYTES = 1 << 20           # .treeinfo / SHA256SUMS are a few KiB


def media_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    return cache_root(environ) / "media"


# -- hashing and downloading ---------------------------------------------------------------------

def file_name(url: str) -> str:
    name = PurePosixPath(urlsplit(url).path).name
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "download"


@contextlib.contextmanager
def locked(path: Path, reporter: Reporter) -> Iterator[None]:
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


def download_resumable(url: str, part: Path, *, reporter: Reporter, timeout: float, attempts: int,
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
        reporter.info(f"download of {file_name(url)} interrupted ({reason}); resuming in {delay:.0f}s")
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
    name = file_name(url)
    final = slot / name
    with locked(slot / ".lock", reporter):
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
            download_resumable(url, part, reporter=reporter, timeout=timeout, attempts=attempts,
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

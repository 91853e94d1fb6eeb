"""The body of an upload: ``UploadStream`` is a file-like object that reads the file in fixed chunks (so
memory stays flat whatever the image size), reports progress, can be rate-limited, and lets a signal
handler interrupt it between chunks; ``Progress`` is the bar (a line every 25% off a terminal)."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..events import Reporter

CHUNK_SIZE = 4 * 1024 * 1024


class Progress:
    """A progress bar on a terminal, a line every 25% otherwise, and events for machines."""

    def __init__(self, reporter: Reporter, what: str, total: int) -> None:
        self.reporter = reporter
        self.what = what
        self.total = max(total, 1)
        self.done_bytes = 0
        self.start = time.monotonic()
        self._last_event = 0.0
        self._last_quarter = 0
        self._tty = bool(getattr(reporter.stream, "isatty", lambda: False)())
        reporter.event("progress", what=what, done=0, total=total)

    def add(self, n: int) -> None:
        self.done_bytes += n
        now = time.monotonic()
        if now - self._last_event >= 0.5:
            self._last_event = now
            self.reporter.event("progress", what=self.what, done=self.done_bytes, total=self.total)
            if self._tty:
                self._draw(now)
        quarter = self.done_bytes * 4 // self.total
        if not self._tty and quarter > self._last_quarter and quarter < 4:
            self._last_quarter = quarter
            self.reporter.info(f"{self.what}: {quarter * 25}% ({self._rate(now)})")

    def _rate(self, now: float) -> str:
        secs = max(now - self.start, 1e-6)
        mib = 2**20
        done, total = self.done_bytes / mib, self.total / mib
        return f"{done:.0f}/{total:.0f} MiB, {done / secs:.1f} MiB/s"

    def _draw(self, now: float) -> None:
        width = 30
        filled = int(width * self.done_bytes / self.total)
        bar = "#" * filled + "-" * (width - filled)
        self.reporter.stream.write(f"\r  {self.what} [{bar}] {100 * self.done_bytes // self.total:3d}% "
                                   f"{self._rate(now)}  ")
        self.reporter.stream.flush()

    def done(self) -> None:
        now = time.monotonic()
        if self._tty:
            self._draw(now)
            self.reporter.stream.write("\n")
        self.reporter.event("progress", what=self.what, done=self.done_bytes, total=self.total)
        self.reporter.log(f"{self.what}: {self._rate(now)} in {now - self.start:.1f}s")


class UploadStream(io.RawIOBase):
    """The request body of an upload: reads ``path`` in chunks, never more than one in memory.

    ``len()`` gives the size so HTTP clients send a Content-Length (no chunked encoding). Reads may be
    rate-limited (bytes per second). ``sha512`` is computed over exactly the bytes handed out, so an
    upload can tell "the file changed under us" from "the store stored other bytes".
    """

    def __init__(self, path: Path, progress: Progress | None = None, *, rate_limit: int | None = None,
                 chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self._f.fileno()).st_size
        self.progress = progress
        self.rate_limit = rate_limit
        self.chunk_size = chunk_size
        self.sent = 0
        self._hash = hashlib.sha512()
        self._start = time.monotonic()

    def __len__(self) -> int:
        return self.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        # requests sizes a body as len() minus tell(); io's default tell() raises, which would make
        # it fall back to chunked transfer encoding instead of a Content-Length.
        return self.sent

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or n > self.chunk_size:
            n = self.chunk_size
        data = self._f.read(n)
        if data:
            self.sent += len(data)
            self._hash.update(data)
            if self.progress:
                self.progress.add(len(data))
            if self.rate_limit:
                ahead = self.sent / self.rate_limit - (time.monotonic() - self._start)
                if ahead > 0:
                    time.sleep(ahead)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        while chunk := self.read(self.chunk_size):
            yield chunk

    @property
    def sha512(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._f.close()
        super().close()

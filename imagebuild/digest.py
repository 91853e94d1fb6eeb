"""File digests, read once in chunks for any number of algorithms (artifacts, media, uploads)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def hash_file(path: Path, algorithms: tuple[str, ...] = ("sha256", "sha512"),
              progress: Callable[[int], None] | None = None) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    # one thread per algorithm (hashlib lets go of the GIL): sha256 and sha512 of a 300 MB artifact
    # in the time of the slower one
    with open(path, "rb") as f, ThreadPoolExecutor(max_workers=len(hashers)) as pool:
        while chunk := f.read(CHUNK):
            for _ in pool.map(lambda h: h.update(chunk), hashers.values()):  # noqa: B023 (used at once)
                pass
            if progress:
                progress(len(chunk))
    return {a: h.hexdigest() for a, h in hashers.items()}


def sha256_file(path: Path) -> str:
    return hash_file(path, ("sha256",))["sha256"]

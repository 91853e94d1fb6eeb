"""File digests, read once in chunks for any number of algorithms (artifacts, media, uploads)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def hash_file(path: Path, algorithms: tuple[str, ...] = ("sha256", "sha512"),
              progress: Callable[[int], None] | None = None) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            if progress:
                progress(len(chunk))
    return {a: h.hexdigest() for a, h in hashers.items()}


def sha256_file(path: Path) -> str:
    return hash_file(path, ("sha256",))["sha256"]

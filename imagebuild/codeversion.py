"""The version of our own code that a stage's output depends on: a digest of its source files, part of
the stage's cache key, so that changing the code that made an output is a new key (``plan.STAGE_CODE``,
``install/grubcache.CODE``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def code_version(paths: tuple[str, ...]) -> str:
    """sha256 (16 hex digits) of the files and directories ``paths`` name under ``imagebuild/``."""
    h = hashlib.sha256()
    for rel in paths:
        p = PACKAGE_DIR / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(PACKAGE_DIR)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]

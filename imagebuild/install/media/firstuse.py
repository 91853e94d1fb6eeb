"""Trust on first use (``install.vm.media_trust = "first-use"``), as SSH does with host keys: the first
download of an unpinned file is hashed and recorded in ``first-use-pins.json`` beside the cache, and
every later build verifies against that record. Also the unverified download ``invoke pin`` hashes."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

from ...digest import sha256_file
from ...events import Reporter
from .download import download_resumable, file_name, locked
from .errors import ChecksumMismatch
from .tree import BootFile


def first_use(bf: BootFile, root: Path, *, reporter: Reporter, timeout: float) -> BootFile:
    store = root / "first-use-pins.json"
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".first-use.lock", reporter):
        pins = json.loads(store.read_text()) if store.exists() else {}
        if bf.url in pins:
            reporter.info(f"warning: {bf.role} {bf.url} is not pinned in the recipe; verifying against the "
                          f"sha256 recorded at its first use ({pins[bf.url]})")
            return dataclasses.replace(bf, sha256=pins[bf.url])
        digest = download_unverified(bf, root, reporter=reporter, timeout=timeout, source="")
        pins[bf.url] = digest
        tmp = store.with_suffix(".partial")
        tmp.write_text(json.dumps(pins, indent=2, sort_keys=True))
        os.replace(tmp, store)
    reporter.info(f"warning: {bf.role} {bf.url} is not pinned in the recipe; trusting it on first use and "
                  f"recording sha256 {digest} (pin it in the recipe: install.vm.{bf.role}_sha256)")
    return dataclasses.replace(bf, sha256=digest)


def download_unverified(bf: BootFile, root: Path, *, reporter: Reporter, timeout: float, source: str) -> str:
    """Download a file with no pin into the cache under its own hash; returns the hash."""
    scratch = root / "unverified"
    scratch.mkdir(parents=True, exist_ok=True)
    part = scratch / f"{uuid.uuid4().hex}-{file_name(bf.url)}.part"
    try:
        download_resumable(bf.url, part, reporter=reporter, timeout=timeout, attempts=4)
        digest = sha256_file(part)
        if bf.listed_sha256 and digest != bf.listed_sha256:
            raise ChecksumMismatch(f"{bf.url}: sha256 is {digest}, but the tree's {source or 'index'} lists "
                                   f"{bf.listed_sha256}; the download was deleted")
        slot = root / "sha256" / digest
        slot.mkdir(parents=True, exist_ok=True)
        with locked(slot / ".lock", reporter):
            os.replace(part, slot / file_name(bf.url))
    finally:
        part.unlink(missing_ok=True)
    return digest

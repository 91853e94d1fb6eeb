"""What makes two builds of one recipe write the same bytes: every value that would be random is derived
from one seed, and every timestamp from one ``SOURCE_DATE_EPOCH``.

- **The seed** is the sha256 of the resolved recipe (``build_seed``). The disk's GPT GUID and partition
  GUIDs, the root filesystem's UUID and ext4 hash seed, and the ESP's vfat volume id are derived from it
  (``derived_uuid``, ``vfat_id``): the same recipe gives the same identifiers, another recipe others.
  (Two clones of one image share them, as every clone of a cloud image does; the boot test proves
  each clone still makes its own machine-id and host keys.)
- **SOURCE_DATE_EPOCH** is the newest date among the installed packages (``source_date_epoch``): the
  time dpkg gives each package's Debian changelog, the date of its last entry, which reproducible
  Debian packages give every file they ship. It moves only when a package in the image changes, not
  when the archive's InRelease does. Files made or rewritten at install time get it as their time.
- **ext4 from a tree**: mke2fs 1.47.0 (bookworm's) copies each file's ctime from the source tree, which
  nobody can set; 1.47.1 clamps it. ``ext4_time_commands`` writes the debugfs commands that set every
  used inode's ctime and atime to the epoch after ``mkfs.ext4 -d`` (run with ``E2FSPROGS_FAKE_TIME``
  for the superblock's times), the files' mtimes having been clamped in the tree first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ImageBuildError

DPKG_INFO = "var/lib/dpkg/info"


def build_seed(recipe_data: dict[str, Any]) -> str:
    """The seed of a build: sha256 of the resolved recipe as JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(recipe_data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def derived_uuid(seed: str, purpose: str) -> str:
    """A random-looking UUID (version 4 and RFC 4122 variant bits set) that only ``seed`` and ``purpose``
    decide: ``derived_uuid(seed, "root-fs")``."""
    raw = bytearray(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def vfat_id(seed: str) -> str:
    """The vfat volume id (8 hex digits, as ``mkfs.fat -i`` takes it)."""
    return hashlib.sha256(f"{seed}:esp-volume-id".encode()).hexdigest()[:8].upper()


def source_date_epoch(root: Path) -> int:
    """The newest of the installed packages' own dates: each package's Debian changelog
    (``/usr/share/doc/PACKAGE/changelog.Debian.gz``, a regular file, not a link to another package's) is
    unpacked with the date of its last entry, which is the date reproducible Debian packages give every
    file they ship. Nothing touches those files at install time (configuration files and the like are
    rewritten by maintainer scripts, and by us)."""
    doc = root / "usr/share/doc"
    if not (root / DPKG_INFO).is_dir():
        raise ImageBuildError(f"{root / DPKG_INFO}: no dpkg database in the tree; SOURCE_DATE_EPOCH cannot "
                              "be derived")
    dates = [int(p.lstat().st_mtime) for p in doc.glob("*/changelog.Debian.gz") if not p.is_symlink()]
    if not dates:
        raise ImageBuildError(f"{doc}: no package changelog in the tree (documentation excluded?); "
                              "SOURCE_DATE_EPOCH cannot be derived")
    return max(dates)


def clamp_tree_times(root: Path, epoch: int) -> int:
    """Every file, directory and symlink under ``root`` newer than ``epoch`` gets ``epoch`` as its mtime,
    and every one gets its mtime as its atime (reading a file during the build must not show). Returns
    how many mtimes were clamped."""
    clamped = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames, *([] if Path(dirpath) != root else [""])]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            mtime = int(st.st_mtime) if st.st_mtime <= epoch else epoch
            clamped += st.st_mtime > epoch
            os.utime(path, (mtime, mtime), follow_symlinks=False)
    return clamped


def used_inodes(dumpe2fs_output: str) -> list[int]:
    """The inode numbers in use, from ``dumpe2fs`` (each group's "Free inodes" ranges)."""
    per_group = re.search(r"Inodes per group:\s+(\d+)", dumpe2fs_output)
    if per_group is None:
        raise ImageBuildError("dumpe2fs printed no 'Inodes per group': not an ext4 filesystem?")
    per = int(per_group.group(1))
    used: list[int] = []
    for m in re.finditer(r"^Group (\d+):.*?^\s+Free inodes: ?([^\n]*)$", dumpe2fs_output, re.S | re.M):
        group, free = int(m.group(1)), set[int]()
        for part in filter(None, (p.strip() for p in m.group(2).split(","))):
            first, _, last = part.partition("-")
            free.update(range(int(first), int(last or first) + 1))
        used += [i for i in range(group * per + 1, (group + 1) * per + 1) if i not in free]
    return used


def ext4_time_commands(inodes: Iterable[int], epoch: int) -> str:
    """debugfs commands: each inode's ctime and atime set to ``epoch`` (its mtime was clamped in the tree)."""
    return "".join(f"sif <{i}> ctime {epoch:#x}\nsif <{i}> atime {epoch:#x}\n" for i in inodes)

"""Seal a customized bootstrap disk: each filesystem written once more, from its finished tree, so that the
same recipe and packages give the same bytes (``reproducible``).

By the end of customize the root filesystem has been mounted read-write by the libguestfs appliance and
by the host's grub, and the ESP filled by mtools or the appliance's vfat driver: mount counts, journal
blocks, block placement after deletions, and times (ctime cannot be set by anyone) all depend on when
and how that happened. So the disk is written again, into a fresh sparse file:

- everything outside the ESP and the root partition (both GPT headers, the BIOS boot partition with
  grub's core.img) copied as it is;
- the ESP: ``mkfs.fat`` with the derived volume id, then its files (read out with mtools, mtimes
  clamped) copied in one by one in sorted order, with ``SOURCE_DATE_EPOCH`` and ``TZ=UTC`` (FAT keeps
  local time);
- the root filesystem: the old one mounted (in a private mount namespace, through a loop device: it is
  scratch now), its mtimes clamped to the epoch, then ``mkfs.ext4 -d`` from it with the derived UUID and
  hash seed and ``E2FSPROGS_FAKE_TIME``, and debugfs dating every inode's ctime and atime (mke2fs 1.47.0
  copies ctime from the tree). Both trees are then listed (path, type, mode, owner, size, mtime, link
  target, extended attributes) and must agree: the seal changes no file.

libguestfs generalized and post-checked the tree; the seal only writes it again. A qcow2 disk (an overlay
over a cached install) is read through a raw copy first, the host's loop devices taking raw files only.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path

from ..disklayout import ESP_LABEL, SECTOR, DiskLayout, Role
from ..errors import InstallFailed
from ..events import Reporter
from ..reproducible import clamp_tree_times, ext4_time_commands, used_inodes
from ..run import run

LIST = r"%P\t%y\t%m\t%U\t%G\t%s\t%Ts\t%l\n"


def read_partitions(disk: Path, reporter: Reporter) -> dict[int, tuple[int, int]]:
    """partition number → (start, size) in sectors, as sfdisk reads a raw disk's table."""
    out = run(["sfdisk", "--json", str(disk)], reporter=reporter, log_output=False,
              purpose="read the partition table").stdout
    table = json.loads(out)["partitiontable"]
    return {int(p["node"][len(str(disk)):]): (int(p["start"]), int(p["size"])) for p in table.get("partitions", [])}


def date_inodes(fs: str, epoch: int, commands: Path, reporter: Reporter) -> None:
    """Every used inode of the ext4 filesystem ``fs`` (``FILE?offset=N``) gets ``epoch`` as its ctime and
    atime: mke2fs 1.47.0 copies ctime from the tree it writes (``reproducible.ext4_time_commands``)."""
    listing = run(["dumpe2fs", fs], reporter=reporter, log_output=False, purpose="list the used inodes").stdout
    commands.write_text(ext4_time_commands(used_inodes(listing), epoch))
    run(["debugfs", "-w", "-f", str(commands), fs], env={"E2FSPROGS_FAKE_TIME": str(epoch)}, reporter=reporter,
        log_output=False, purpose="date every inode SOURCE_DATE_EPOCH")


def _copy_ranges(src: Path, dest: Path, ranges: list[tuple[int, int]]) -> None:
    """Copy ``(start, end)`` byte ranges of ``src`` into ``dest`` at the same offsets, skipping holes."""
    with open(src, "rb") as fi, open(dest, "r+b") as fo:
        for start, end in ranges:
            pos = start
            while pos < end:
                try:
                    data = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
                except OSError:
                    break
                if data >= end:
                    break
                hole = min(os.lseek(fi.fileno(), data, os.SEEK_HOLE), end)
                while data < hole:
                    n = os.copy_file_range(fi.fileno(), fo.fileno(), hole - data, data, data)
                    if n == 0:
                        break
                    data += n
                pos = hole


def _outside(size: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for start, end in sorted(taken):
        if start > pos:
            out.append((pos, start))
        pos = max(pos, end)
    if pos < size:
        out.append((pos, size))
    return out


def _esp(src: Path, dest: Path, start: int, size: int, esp_id: str, epoch: int, work: Path,
         reporter: Reporter) -> int:
    """The ESP of ``dest`` made anew with the files of ``src``'s; returns how many files."""
    env = {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC", "MTOOLS_SKIP_CHECK": "1"}
    tree = work / "esp-tree"
    tree.mkdir()
    run(["mcopy", "-s", "-m", "-n", "-i", f"{src}@@{start}", "::/*", str(tree)], env=env, reporter=reporter,
        purpose="read the ESP's files")
    clamp_tree_times(tree, epoch)
    # --invariant: the volume label's entry dated by a constant (dosfstools 4.2 ignores SOURCE_DATE_EPOCH
    # and would write the time of the build); -i still gives the derived volume id
    run(["mkfs.fat", "--invariant", "-F", "32", "-s", "1", "-n", ESP_LABEL, "-i", esp_id, f"--offset={start // SECTOR}",
         str(dest), str(size // 1024)], env=env, reporter=reporter, purpose="make the ESP anew (vfat)")
    files = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel = Path(dirpath).relative_to(tree)
        image = f"{dest}@@{start}"
        if rel != Path("."):
            run(["mmd", "-i", image, f"::/{rel}"], env=env, reporter=reporter, log_output=False,
                purpose="an ESP directory")
        for name in sorted(filenames):
            run(["mcopy", "-m", "-i", image, str(Path(dirpath) / name), f"::/{rel / name}"], env=env,
                reporter=reporter, log_output=False, purpose="an ESP file")
            files += 1
    # directories' dates: set by mmd from SOURCE_DATE_EPOCH
    return files


def _root_script(src: Path, dest: Path, start: int, size: int, *, uuid: str, hash_seed: str, epoch: int,
                 work: Path) -> str:
    """Shell for a private mount namespace: the old root filesystem mounted from a loop device (detached
    on every exit), its mtimes clamped, written again into ``dest`` by mkfs.ext4, the new one mounted
    read-only, and both listed (side by side) for the caller to compare."""
    q = shlex.quote
    old, new = work / "root-old", work / "root-new"
    old.mkdir()
    new.mkdir()
    mk = (f"E2FSPROGS_FAKE_TIME={epoch} mkfs.ext4 -q -F -d {q(str(old))} -U {uuid} -L root "
          f"-E offset={start},root_owner=0:0,hash_seed={hash_seed} {q(str(dest))} {size // 1024}k")
    listing = ("(cd {m} && find . -xdev -printf '" + LIST + "' | sort && "
               "getfattr -R -h -d -m - --absolute-names . 2>/dev/null | grep -v '^#' | sort) > {out}")
    return "\n".join([
        "set -eu",
        "DEVS=",
        "cleanup() { umount " + q(str(new)) + " 2>/dev/null || true; umount " + q(str(old)) + " 2>/dev/null || true;"
        " for d in $DEVS; do losetup -d $d 2>/dev/null || true; done; }",
        "trap cleanup EXIT",
        "trap 'cleanup; exit 130' INT TERM HUP",  # an interrupted build: no loop device outlives it
        f"d=$(losetup --find --show --offset {start} --sizelimit {size} {q(str(src))})", 'DEVS="$d"',
        f'mount -t ext4 "$d" {q(str(old))}',
        f"find {q(str(old))} -xdev -newermt @{epoch} -exec touch -h -d @{epoch} {{}} +",
        mk,
        f"e=$(losetup --find --show --read-only --offset {start} --sizelimit {size} {q(str(dest))})",
        'DEVS="$DEVS $e"',
        f'mount -t ext4 -o ro,noload "$e" {q(str(new))}',
        # both trees listed at once, one per core
        listing.format(m=q(str(old)), out=q(str(work / "old.list"))) + " & a=$!",
        listing.format(m=q(str(new)), out=q(str(work / "new.list"))) + " & b=$!",
        'wait "$a"; wait "$b"',
    ]) + "\n"


def _normalized(listing: str) -> str:
    """A directory's size is its history (entries once added, then removed), not its content: left out."""
    lines = []
    for line in listing.splitlines():
        fields = line.split("\t")
        if len(fields) == 8 and fields[1] == "d":
            fields[5] = ""
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def reseal(disk: Path, fmt: str, layout: DiskLayout, *, root_uuid: str, hash_seed: str, esp_id: str, epoch: int,
           work: Path, reporter: Reporter) -> Path:
    """Write ``disk`` (raw or qcow2) again as a raw disk with every filesystem made from its tree; returns
    the new disk (``work/disk.raw``, in place of the old one)."""
    t0 = time.monotonic()
    scratch = work / "reseal"
    scratch.mkdir()
    src = disk
    if fmt != "raw":
        src = scratch / "source.raw"
        run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(disk), str(src)], reporter=reporter,
            purpose="the customized disk as a raw file the host can read")
    size = src.stat().st_size
    parts = read_partitions(src, reporter)
    missing = [p.number for p in layout.partitions if p.number not in parts]
    if missing:
        raise InstallFailed(f"{disk.name} has no partition {missing} of the {layout.firmware} layout")
    dest = work / "disk-sealed.raw"
    with open(dest, "wb") as f:
        f.truncate(size)
    regions = {p.role: (parts[p.number][0] * SECTOR, parts[p.number][1] * SECTOR) for p in layout.partitions}
    rewritten = [(s, s + n) for role, (s, n) in regions.items() if role in (Role.ROOT, Role.ESP)]
    _copy_ranges(src, dest, _outside(size, rewritten))
    esp_files = 0
    if Role.ESP in regions:
        esp_files = _esp(src, dest, *regions[Role.ESP], esp_id, epoch, scratch, reporter)
    start, length = regions[Role.ROOT]
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
         _root_script(src, dest, start, length, uuid=root_uuid, hash_seed=hash_seed, epoch=epoch, work=scratch)],
        reporter=reporter, purpose="write the root filesystem again from its tree")
    old, new = (_normalized((scratch / n).read_text(errors="replace")) for n in ("old.list", "new.list"))
    if old != new:
        first = next((a, b) for a, b in zip(old.splitlines() + [""], new.splitlines() + [""], strict=False)
                     if a != b)
        raise InstallFailed(f"the sealed root filesystem does not hold the tree it was made from: first "
                            f"difference {first[0]!r} against {first[1]!r}")
    fs = f"{dest}?offset={start}"
    date_inodes(fs, epoch, scratch / "times.debugfs", reporter)
    run(["e2fsck", "-fn", fs], reporter=reporter, log_output=False, purpose="check the sealed root filesystem")
    disk.unlink()
    shutil.rmtree(scratch, ignore_errors=True)  # nothing is mounted there: the namespace ended
    final = work / "disk.raw"  # the build's disk, by the name a raw install gives it
    dest.replace(final)
    reporter.info(f"sealed: root filesystem ({old.count(chr(10))} entries, the same tree) and ESP ({esp_files} "
                  f"files) written again, dated {epoch} ({time.monotonic() - t0:.1f}s)")
    return final

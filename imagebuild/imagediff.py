"""Where two disk images differ, from the top down, the way diffoscope would say it: the files (qcow2
encoding), then the disks the guests see (content digests), then which partition, and inside an ext4
partition which files differ and how (content, mode, owner, time, link target).

Used by reproducibility checks (two builds of one recipe must agree) and ``verify --rebuild``. Each image
is converted to a sparse raw copy in ``work`` (removed afterwards); an ext4 partition is read through a
read-only loop device mounted in a private mount namespace, which ends with the command.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .content_digest import content_sha256
from .digest import sha256_file
from .events import NULL_REPORTER, Reporter
from .install.reseal import read_partitions
from .run import run

SECTOR = 512
CHUNK = 1 << 22
LIST_FORMAT = r"%P\t%y\t%m\t%U\t%G\t%s\t%T@\t%l\n"


@dataclass
class ImageDiff:
    """The verdict, most telling first: ``same`` (bytes), ``same_content`` (guest-visible disk), the
    partitions that differ, and for each ext4 one the files that differ."""
    same: bool
    same_content: bool
    lines: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    files: dict[int, list[str]] = field(default_factory=dict)

    def explain(self, limit: int = 40) -> str:
        out = list(self.lines)
        for number, files in self.files.items():
            out.append(f"partition {number}: {len(files)} path(s) differ" + (":" if files else ""))
            out += [f"  {f}" for f in files[:limit]]
            out += [f"  ... {len(files) - limit} more"] if len(files) > limit else []
        return "\n".join(out)


def _raw(image: Path, fmt: str, dest: Path, reporter: Reporter) -> Path:
    if fmt == "raw":
        return image
    run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", str(image), str(dest)], reporter=reporter,
        purpose="the guest-visible disk, sparse, to compare")
    return dest


def _range_sha256(path: Path, start: int, length: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _fs_type(raw: Path, start: int, reporter: Reporter) -> str:
    res = run(["blkid", "-p", "-O", str(start * SECTOR), "-o", "value", "-s", "TYPE", str(raw)],
              reporter=reporter, check=False, log_output=False, purpose="which filesystem")
    return res.stdout.strip()


def _listings(a: Path, b: Path, start: int, size: int, work: Path, reporter: Reporter) -> tuple[str, str]:
    """Each ext4 partition at ``start`` mounted read-only in a private namespace; every path's type, mode,
    owner, size, mtime, link target and (for a file) sha256, one line each."""
    script = ["set -e", "cleanup() { for m in $MNTS; do umount $m 2>/dev/null || true; done; "
              "for d in $DEVS; do losetup -d $d 2>/dev/null || true; done; }", "trap cleanup EXIT",
              "trap 'cleanup; exit 130' INT TERM HUP",
              "MNTS=; DEVS="]
    for name, raw in (("a", a), ("b", b)):
        mnt = work / f"mnt-{name}"
        mnt.mkdir(exist_ok=True)
        q = shlex.quote
        script += [f"d=$(losetup --find --show --read-only --offset {start * SECTOR} --sizelimit "
                   f"{size * SECTOR} {q(str(raw))})", "DEVS=\"$DEVS $d\"",
                   f"mount -t ext4 -o ro,noload \"$d\" {q(str(mnt))}", f"MNTS=\"{q(str(mnt))} $MNTS\"",
                   f"(cd {q(str(mnt))} && find . -xdev -printf '{LIST_FORMAT}' | sort > {q(str(work / name))}.list"
                   f" && find . -xdev -type f -print0 | sort -z | xargs -0 -r sha256sum > {q(str(work / name))}.sums)"]
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)], reporter=reporter,
        log_output=False, purpose="list both root filesystems, read-only")
    return tuple(((work / f"{n}.list").read_text(errors="replace") + "\0" +
                  (work / f"{n}.sums").read_text(errors="replace")) for n in ("a", "b"))  # type: ignore[return-value]


def _file_differences(listing_a: str, listing_b: str) -> list[str]:
    def parse(text: str) -> dict[str, dict[str, str]]:
        meta, _, sums = text.partition("\0")
        out: dict[str, dict[str, str]] = {}
        for line in meta.splitlines():
            path, kind, mode, uid, gid, size, mtime, link = (line.split("\t") + [""] * 8)[:8]
            out[path or "."] = {"type": kind, "mode": mode, "owner": f"{uid}:{gid}", "size": size,
                                "mtime": mtime.split(".")[0], "link": link}
        for line in sums.splitlines():
            digest, _, path = line.partition("  ")
            out.setdefault(path.removeprefix("./"), {})["content"] = digest[:16]
        return out

    a, b = parse(listing_a), parse(listing_b)
    diffs = []
    for path in sorted(a.keys() | b.keys()):
        if path not in a or path not in b:
            diffs.append(f"/{path}: only in the {'first' if path in a else 'second'} image")
            continue
        what = [f"{k} {a[path].get(k)} → {b[path].get(k)}" for k in ("type", "content", "size", "mode", "owner",
                                                                       "link", "mtime")
                if a[path].get(k) != b[path].get(k)]
        if what:
            diffs.append(f"/{path}: " + ", ".join(what))
    return diffs


def compare_images(a: Path, b: Path, *, work: Path, fmt: str = "qcow2", reporter: Reporter = NULL_REPORTER,
                   files: bool = True) -> ImageDiff:
    """Compare ``a`` and ``b`` from the top down; ``files``: name the differing files of an ext4 partition."""
    if sha256_file(a) == sha256_file(b):
        return ImageDiff(True, True, [f"{a.name} and {b.name}: byte-identical files"])
    ca, cb = content_sha256(a, fmt), content_sha256(b, fmt)
    if ca == cb:
        return ImageDiff(False, True, [f"the files differ but the disks the guests see are the same "
                                       f"(content sha256 {ca[:16]}…): only the {fmt} encoding differs"])
    result = ImageDiff(False, False, [f"the disks differ: content sha256 {ca[:16]}… against {cb[:16]}…"])
    work.mkdir(parents=True, exist_ok=True)
    try:
        ra, rb = _raw(a, fmt, work / "a.raw", reporter), _raw(b, fmt, work / "b.raw", reporter)
        pa, pb = read_partitions(ra, reporter), read_partitions(rb, reporter)
        if pa != pb:
            result.lines.append(f"the partition tables differ: {pa} against {pb}")
            return result
        first = min((s for s, _ in pa.values()), default=0) * SECTOR
        if _range_sha256(ra, 0, first) != _range_sha256(rb, 0, first):
            result.lines.append(f"the first {first // SECTOR} sectors differ (partition table, boot code)")
        for number, (start, size) in sorted(pa.items()):
            if _range_sha256(ra, start * SECTOR, size * SECTOR) == _range_sha256(rb, start * SECTOR, size * SECTOR):
                continue
            fs = _fs_type(ra, start, reporter)
            result.partitions.append(number)
            result.lines.append(f"partition {number} ({fs or 'no filesystem'}) differs")
            if files and fs == "ext4":
                result.files[number] = _file_differences(*_listings(ra, rb, start, size, work, reporter))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""The content digest of a disk image: the sha256 of the disk the guest sees (the bytes
``qemu-img convert -O raw`` would write), so two images that differ only in their qcow2 encoding
(compression, cluster order, a zero written or left unallocated) are told apart from two whose guests
see different bytes. The file digest (``digest.sha256_file``) says which file; this says which disk.

qemu-img cannot give those bytes to a pipe (``convert`` and ``dd`` resize and ``pwrite()`` their
target: "Could not resize file"), and a raw copy would write the whole virtual disk (3-10 GiB) to disk
first. So a qcow2 is read here, as QEMU reads it: its L1 and L2 tables, then each cluster read in place
or decompressed (raw deflate, a 2^12 window, accepted when it fills the whole cluster: QEMU's
``qcow2_zlib_decompress``) by worker threads, while the calling thread hashes in guest order. A run of
zeros (unallocated, or a zero cluster) is hashed from one buffer of zeros, never read: hashing is the
limit (sha256 is sequential, ~1.7 GB/s here), and decompression runs beside it on the other core. A raw
file is read the same way, its holes found with ``SEEK_DATA``/``SEEK_HOLE``.

The reader is strict rather than clever: whatever it does not know (a backing file, encryption, an
external data file, extended L2 entries, zstd, a reserved bit set, an unaligned table) is refused with
``UnreadableImage``, so a digest is never of something QEMU would read differently. The images a build
writes (``sparsify``, ``recompress``: plain zlib qcow2 without backing file, compat 1.1 or 0.10) are
all readable. https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageBuildError

WINDOW = 4 << 20                       # guest bytes per task of the worker threads
ZEROS = memoryview(bytes(WINDOW))
SECTOR = 512
MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00    # bits 9-55: a table's or a standard cluster's host offset
L1_RESERVED = 0x7F00_0000_0000_01FF
L2_RESERVED = 0x3F00_0000_0000_01FE    # bits 1-8 and 56-61 of a standard cluster's entry
COPIED, COMPRESSED, ZERO_FLAG = 1 << 63, 1 << 62, 1
# incompatible feature bits (header byte 72): only "dirty" (refcounts may be stale) changes no content
DIRTY = 1
INCOMPATIBLE = {1: "dirty", 2: "the corrupt mark", 4: "an external data file", 8: "a compression type field",
                16: "extended L2 entries"}
PLAIN, DEFLATE = 0, 1


class UnreadableImage(ImageBuildError):
    """A disk image whose guest content cannot be read here (not the format it claims, truncated, or
    using a qcow2 feature this reader refuses); names the file."""

    def __init__(self, message: str, *, file: Path | str) -> None:
        self.file = str(file)
        super().__init__(f"{self.file}: {message}")


@dataclass
class _Window:
    """``length`` guest bytes; ``pieces`` (offset in the window, kind, host offset, host bytes, guest
    bytes) say where the data is; the rest reads as zeros."""

    length: int
    pieces: list[tuple[int, int, int, int, int]] = field(default_factory=list)

    def add(self, at: int, kind: int, host: int, nbytes: int, guest: int) -> None:
        if kind == PLAIN and self.pieces:
            p_at, p_kind, p_host, p_nbytes, p_guest = self.pieces[-1]
            if p_kind == PLAIN and p_at + p_guest == at and p_host + p_nbytes == host and p_nbytes == p_guest:
                self.pieces[-1] = (p_at, PLAIN, p_host, p_nbytes + nbytes, p_guest + guest)
                return
        self.pieces.append((at, kind, host, nbytes, guest))


def content_sha256(path: Path, fmt: str) -> str:
    """sha256 of the guest-visible raw disk of ``path``, a ``raw`` or ``qcow2`` image (the format is
    always named: a qcow2 is never taken for a raw disk, nor the reverse)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UnreadableImage("no such image", file=path) from None
    except OSError as exc:
        raise UnreadableImage(f"cannot open: {exc.strerror}", file=path) from None
    try:
        if fmt == "raw":
            cluster, windows = 0, _raw_windows(fd)
        elif fmt == "qcow2":
            cluster, windows = _qcow2_windows(fd, path)
        else:
            raise UnreadableImage(f"format {fmt!r}: the content digest reads raw and qcow2", file=path)
        return _hash(fd, path, cluster, windows)
    finally:
        os.close(fd)


# --- where the guest's data is -----------------------------------------------------------------------

def _windows(size: int) -> list[_Window]:
    return [_Window(min(WINDOW, size - start)) for start in range(0, size, WINDOW)]


def _raw_windows(fd: int) -> list[_Window]:
    size = os.fstat(fd).st_size
    windows = _windows(size)
    for start, end in _data_ranges(fd, size):
        pos = start
        while pos < end:
            w, at = divmod(pos, WINDOW)
            n = min(end, (w + 1) * WINDOW) - pos
            windows[w].add(at, PLAIN, pos, n, n)
            pos += n
    return windows


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The file's data (not holes), by SEEK_DATA/SEEK_HOLE; all of it where the filesystem cannot say."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:       # only a hole after pos
                break
            return [(0, size)]                 # EINVAL: no hole support here
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end))
        pos = end
    return out


def _qcow2_windows(fd: int, path: Path) -> tuple[int, list[_Window]]:
    head = os.pread(fd, 112, 0)
    if len(head) < 72 or head[:4] != MAGIC:
        raise UnreadableImage("not a qcow2 file (no QFI magic)", file=path)
    (version, backing_off, _bsize, cluster_bits, size, crypt, l1_size, l1_off, _rt_off, _rt_clusters,
     _nb_snapshots, _snap_off) = struct.unpack_from(">IQIIQIIQQIIQ", head, 4)
    incompatible, compression_type = 0, 0
    if version >= 3:
        if len(head) < 104:
            raise UnreadableImage("truncated qcow2 header", file=path)
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        header_len = struct.unpack_from(">I", head, 100)[0]
        compression_type = head[104] if header_len > 104 and len(head) > 104 else 0
    problems = [what for bad, what in (
        (version not in (2, 3), f"version {version}"),
        (backing_off != 0, "a backing file (its content is in the chain: convert it to a standalone image)"),
        (crypt != 0, "encryption"),
        (not 9 <= cluster_bits <= 21, f"cluster_bits {cluster_bits}"),
        (compression_type != 0, f"compression type {compression_type} (zstd), not zlib")) if bad]
    problems += [what for bit, what in INCOMPATIBLE.items() if incompatible & bit and bit != DIRTY]
    if incompatible & ~sum(INCOMPATIBLE):
        problems.append(f"unknown incompatible features {incompatible & ~sum(INCOMPATIBLE):#x}")
    if problems:
        raise UnreadableImage("a qcow2 with " + ", ".join(problems) + ": its content digest is not read here",
                              file=path)
    cluster = 1 << cluster_bits
    per_l2 = cluster // 8
    n_clusters = -(-size // cluster)
    need = -(-n_clusters // per_l2)
    if l1_size < need or (need and l1_off % cluster):
        raise UnreadableImage(f"the L1 table ({l1_size} entries at {l1_off:#x}) cannot map {size} bytes: corrupt",
                              file=path)
    l1 = _table(fd, path, l1_off, need, "L1 table")
    csize_shift = 62 - (cluster_bits - 8)
    csize_mask = (1 << (cluster_bits - 8)) - 1
    host_mask = (1 << csize_shift) - 1
    windows = _windows(size)
    per_window = WINDOW // cluster                 # clusters are at most 2 MiB
    for i, l1e in enumerate(l1):
        if l1e & L1_RESERVED or (l1e & OFFSET_MASK) % cluster:
            raise UnreadableImage(f"L1 entry {i} is {l1e:#x}: reserved bits or an unaligned offset: corrupt",
                                  file=path)
        if not l1e & OFFSET_MASK:
            continue                                   # no L2 table: all its clusters read as zeros
        for j, e in enumerate(_table(fd, path, l1e & OFFSET_MASK, per_l2, f"L2 table {i}")):
            c = i * per_l2 + j
            if c >= n_clusters:
                break
            guest = min(cluster, size - c * cluster)
            w, at = divmod(c, per_window)
            if e & COMPRESSED:
                host = e & host_mask
                nbytes = ((e >> csize_shift) & csize_mask) + 1
                windows[w].add(at * cluster, DEFLATE, host, nbytes * SECTOR - (host & (SECTOR - 1)), guest)
                continue
            if e & L2_RESERVED or (e & OFFSET_MASK) % cluster:
                raise UnreadableImage(f"L2 entry of guest cluster {c} is {e:#x}: reserved bits or an "
                                      "unaligned offset: corrupt", file=path)
            if e & ZERO_FLAG:
                if version < 3:
                    raise UnreadableImage(f"a zero cluster (guest cluster {c}) in a version 2 image: corrupt",
                                          file=path)
                continue
            if e & OFFSET_MASK:
                windows[w].add(at * cluster, PLAIN, e & OFFSET_MASK, guest, guest)
    return cluster, windows


def _table(fd: int, path: Path, offset: int, entries: int, what: str) -> tuple[int, ...]:
    data = os.pread(fd, 8 * entries, offset)
    if len(data) != 8 * entries:
        raise UnreadableImage(f"the {what} at {offset:#x} is past the end of the file: truncated", file=path)
    return struct.unpack(f">{entries}Q", data)


# --- reading and hashing -----------------------------------------------------------------------------

def _fill(fd: int, path: Path, cluster: int, window: _Window) -> bytearray:
    buf = bytearray(window.length)
    view = memoryview(buf)
    for at, kind, host, nbytes, guest in window.pieces:
        if kind == PLAIN:
            # past the end of the file reads as zeros, as QEMU's block layer reads it
            os.preadv(fd, [view[at:at + guest]], host)
            continue
        data = os.pread(fd, nbytes, host)
        try:
            out = zlib.decompressobj(-12).decompress(data, cluster)
        except zlib.error as exc:
            raise UnreadableImage(f"the compressed cluster at host offset {host:#x} does not inflate ({exc}): "
                                  "corrupt", file=path) from None
        if len(out) != cluster:
            raise UnreadableImage(f"the compressed cluster at host offset {host:#x} inflates to {len(out)} "
                                  f"bytes, not {cluster}: corrupt", file=path)
        view[at:at + guest] = out[:guest]
    return buf


def _hash(fd: int, path: Path, cluster: int, windows: list[_Window]) -> str:
    h = hashlib.sha256()
    workers = max(2, min(4, os.cpu_count() or 2))
    pending: deque[Future[bytearray] | int] = deque()
    todo = iter(windows)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="content-digest")

    def ahead() -> None:
        w = next(todo, None)
        if w is not None:
            pending.append(pool.submit(_fill, fd, path, cluster, w) if w.pieces else w.length)

    try:
        for _ in range(4 * workers):
            ahead()
        while pending:
            item = pending.popleft()
            ahead()
            if isinstance(item, int):
                h.update(ZEROS[:item])
            else:
                h.update(item.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return h.hexdigest()

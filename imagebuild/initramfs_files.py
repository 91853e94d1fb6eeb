"""The file names in a Debian initramfs (initramfs-tools), read here the way the kernel and
``unmkinitramfs`` read it, instead of running ``lsinitramfs``.

An initramfs is newc cpio archives one after the other: uncompressed ones first, each padded with
zeros after its trailer, then at most one compressed stream holding the main archive (which may itself
be several archives). ``lsinitramfs`` (``unmkinitramfs``) walks the uncompressed archives header by
header with ``dd`` in a shell loop. That costs little for Debian 12's initramfs (one zstd stream: 0.3 s
here), but Debian 13's initramfs-tools puts the kernel modules, xz-compressed already, in an
uncompressed first archive of ~830 members: 5-6 s (10-25 s on a busy host) on the build's critical
path, the post-check of the ``hotplug`` step. Here the headers are parsed in Python and the compressed
stream is decompressed once, by Python's own zlib, lzma or bz2, or by the ``zstd``, ``lz4`` or ``lzop``
command (Debian's default compression is zstd): 0.3-0.5 s for either.

Only what the checks need is read: the names, in archive order. Anything this reader does not know (a
stream in another format, a truncated header, the old binary or odc cpio formats) is refused with
``UnreadableInitramfs``, naming the file, never guessed at.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tempfile
from pathlib import Path

from .errors import CommandFailed, ImageBuildError
from .events import NULL_REPORTER, Reporter
from .run import run

NEWC = (b"070701", b"070702")          # newc, and newc with checksums ("crc")
HEADER = 110                           # magic, then 13 fields of 8 hex digits
TRAILER = "TRAILER!!!"
# The compressed formats the kernel unpacks (usr/Kconfig), by their leading bytes, as unmkinitramfs
# tells them apart.
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x5d\x00\x00": "lzma", b"\xfd7zXZ\x00": "xz",
         b"\x89LZO": "lzop", b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}
# The formats Python does not read itself: decompressed by their tool, from a file into a file.
COMMANDS = {"zstd": ["zstd", "-d", "-q", "-f", "-o", "{out}", "{src}"],
            "lz4": ["lz4", "-d", "-q", "-f", "{src}", "{out}"],
            "lzop": ["lzop", "-d", "-q", "-f", "-o", "{out}", "{src}"]}


class UnreadableInitramfs(ImageBuildError):
    """An initramfs this reader cannot list (a format it does not know, or a damaged archive); names the
    file."""

    def __init__(self, message: str, *, file: Path | str) -> None:
        self.file, self.reason = str(file), message
        super().__init__(f"{self.file}: {message}")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def cpio_names(data: bytes, *, file: Path | str = "<initramfs>") -> tuple[list[str], int]:
    """The member names of the newc archives at the start of ``data`` (the zeros after each trailer
    skipped), and where the first thing that is not such an archive starts."""
    names: list[str] = []
    pos, end = 0, len(data)
    while pos + HEADER <= end and data[pos:pos + 6] in NEWC:
        try:
            filesize = int(data[pos + 54:pos + 62], 16)
            namesize = int(data[pos + 94:pos + 102], 16)
        except ValueError:
            raise UnreadableInitramfs(f"a damaged cpio header at byte {pos}", file=file) from None
        name_end = pos + HEADER + namesize
        if namesize < 1 or name_end > end:
            raise UnreadableInitramfs(f"a cpio header at byte {pos} names past the end of the file", file=file)
        name = data[pos + HEADER:name_end - 1].decode("utf-8", errors="surrogateescape")
        pos = _align4(_align4(name_end) + filesize)
        if pos > end + 3:
            raise UnreadableInitramfs(f"'{name}' runs past the end of the file", file=file)
        if name == TRAILER:
            while pos < end and data[pos] == 0:   # the padding after an archive (512-byte blocks)
                pos += 1
        else:
            names.append(name)
    return names, min(pos, end)


def _decompress(kind: str, stream: bytes, file: Path, reporter: Reporter) -> bytes:
    try:
        if kind == "gzip":
            return gzip.decompress(stream)
        if kind == "bzip2":
            return bz2.decompress(stream)
        if kind in ("xz", "lzma"):
            return lzma.decompress(stream, format=lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UnreadableInitramfs(f"its {kind} stream does not decompress: {exc}", file=file) from None
    with tempfile.TemporaryDirectory(prefix="imagebuild-initramfs-") as tmp:
        src, out = Path(tmp) / f"main.{kind}", Path(tmp) / "main.cpio"
        src.write_bytes(stream)
        try:
            run([a.format(src=src, out=out) for a in COMMANDS[kind]], reporter=reporter, log_output=False,
                purpose=f"decompress the initramfs's main archive ({kind})")
        except CommandFailed as exc:
            raise UnreadableInitramfs(f"its {kind} stream does not decompress: {exc}", file=file) from None
        return out.read_bytes()


def initramfs_names(path: Path, reporter: Reporter = NULL_REPORTER) -> list[str]:
    """Every member name of the initramfs ``path``, early archives first, as ``lsinitramfs`` lists them."""
    data = Path(path).read_bytes()
    names, pos = cpio_names(data, file=path)
    if pos == len(data):
        return names
    rest = data[pos:]
    kind = next((k for magic, k in MAGIC.items() if rest.startswith(magic)), None)
    if kind is None:
        raise UnreadableInitramfs(f"byte {pos} starts neither a cpio archive nor a compressed stream the "
                                  f"kernel unpacks ({rest[:6].hex()})", file=path)
    main = _decompress(kind, rest, Path(path), reporter)
    more, end = cpio_names(main, file=path)
    if end != len(main):
        raise UnreadableInitramfs(f"its {kind} stream holds something other than cpio archives at byte {end}",
                                  file=path)
    return names + more

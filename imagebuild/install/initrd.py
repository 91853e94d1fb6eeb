"""Answer-file injection: append a newc cpio archive to the installer's initrd (Oz and lorax do the
same). The kernel unpacks concatenated archives in order, compressed or not, so the installer finds
``/ks.cfg`` (or ``/preseed.cfg``) at its root without remastering anything and without a network
server or keystrokes over VNC."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _entry(name: str, data: bytes, mode: int, ino: int) -> bytes:
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0]
    header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    return header + name_b + _pad4(len(header) + len(name_b)) + data + _pad4(len(data))


def newc_archive(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A newc cpio archive of regular files: {name: (content, permission bits)}, owned by root."""
    out = bytearray()
    for ino, (name, (data, perm)) in enumerate(sorted(files.items()), start=1):
        out += _entry(name.lstrip("/"), data, 0o100000 | perm, ino)
    out += _entry(TRAILER, b"", 0, 0)
    out += _pad4(len(out))
    return bytes(out)


def inject(initrd: Path, files: dict[str, tuple[bytes, int]], dest: Path) -> Path:
    """Write ``dest`` = ``initrd`` followed by a cpio of ``files`` (the cached original stays intact)."""
    tmp = dest.with_name(f".{dest.name}.partial")
    with open(initrd, "rb") as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        # the kernel looks for the next archive at a 4-byte boundary
        out.write(_pad4(out.tell()))
        out.write(newc_archive(files))
    os.chmod(tmp, 0o600)  # it carries the root password hash
    os.replace(tmp, dest)
    return dest

"""The libguestfs appliance booted from its kernel uncompressed, through PVH: 5-6 s less per launch
under emulation.

libguestfs boots a supermin appliance whose kernel is the host's ``/boot/vmlinuz-*``. Debian's is a
bzImage with an xz-compressed payload, and under TCG its decompressor is the slowest part of the boot:
SeaBIOS hands over at 0.3 s and the kernel prints its first line at 6.6 s (measured here, a bare
``qemu-system-x86_64 -accel tcg -kernel``). The same kernel unpacked to its ELF ``vmlinux`` carries a
PVH entry point (``XEN_ELFNOTE_PHYS32_ENTRY``, ``CONFIG_PVH``), which QEMU's ``-kernel`` enters
directly: its first line at 0.8 s. A libguestfs launch then takes 15-18 s instead of 20-22 s; it is on
the critical path of every customize-only rebuild, and in a cold build it frees a core for the
install.

The mechanism is libguestfs' own "fixed appliance" (a directory with ``README.fixed``, ``kernel``,
``initrd`` and ``root``, named by ``set_path``; Fedora's and RHEL's prebuilt appliances ship this way).
It is made from the supermin appliance libguestfs itself uses:

1. ``supermin --build --if-newer`` exactly as libguestfs runs it before each launch (same output
   directory, same lock), so a host update rebuilds the appliance as it would without us;
2. its ``initrd`` and ``root`` hard-linked (supermin replaces files, never rewrites them, so a link is a
   snapshot; a copy when the cache is on another filesystem), its ``kernel`` unpacked;
3. kept under ``$IMAGEBUILD_CACHE/appliance/<key>``, the key naming the supermin files (device, inode,
   size) and libguestfs' version, written under a temporary name and renamed.

Only the kernel's form changes: the same build of the same kernel with the same modules, initrd, root
and command line. Where it cannot be had (a payload compressed with something other than xz or gzip,
no PVH note, supermin missing), or ``IMAGEBUILD_APPLIANCE_KERNEL=packaged``, libguestfs boots its own
appliance as before, and the build log says why.
"""

from __future__ import annotations

import hashlib
import lzma
import mmap
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

from .errors import ImageBuildError
from .events import Reporter
from .run import run

KERNEL_CHOICES = ("pvh", "packaged")
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4
CHUNK = 1 << 20  # bytes read, and bytes unpacked, at a time
FORMAT = 1  # the layout of a fixed appliance directory this module writes; part of its key

_lock = threading.Lock()
_chosen: dict[tuple[str, str], Path | None] = {}


class KernelNotUnpackable(ImageBuildError):
    """The host kernel cannot be booted through PVH (its payload's compression, or no PVH entry)."""


def unpack_bzimage(src: Path, dest: Path) -> None:
    """Write to ``dest`` the ELF vmlinux inside the bzImage ``src``: the payload's place from its setup
    header (boot protocol 2.08+: ``setup_sects`` at 0x1f1, ``payload_offset``/``payload_length`` at
    0x248/0x24c), unpacked a chunk at a time (a 60 MiB vmlinux never sits in the orchestrator's memory)."""
    with open(src, "rb") as f, open(dest, "wb") as out:
        head = f.read(0x250)
        if len(head) < 0x250 or head[0x202:0x206] != b"HdrS":
            raise KernelNotUnpackable("not a bzImage (no HdrS setup header)")
        version = struct.unpack_from("<H", head, 0x206)[0]
        if version < 0x208:
            raise KernelNotUnpackable(f"boot protocol {version >> 8}.{version & 0xff} names no payload (2.08+ does)")
        setup_sects = head[0x1f1] or 4
        offset, length = struct.unpack_from("<II", head, 0x248)
        f.seek((setup_sects + 1) * 512 + offset)
        first = f.read(min(length, CHUNK))
        dec: lzma.LZMADecompressor | zlib._Decompress
        if first.startswith(b"\xfd7zXZ\x00"):
            dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        elif first.startswith(b"\x1f\x8b"):
            dec = zlib.decompressobj(wbits=31)  # gzip framing
        else:
            raise KernelNotUnpackable(f"its payload is compressed with something Python cannot unpack "
                                      f"(magic {first[:4].hex()}; xz and gzip can be)")
        left = length - len(first)

        def more() -> bytes:
            nonlocal left, first
            if first:
                chunk, first = first, b""
            else:
                chunk = f.read(min(left, CHUNK))
                left -= len(chunk)
            return chunk

        try:
            while not dec.eof:  # at most CHUNK bytes out per call (zeros unpack a thousandfold)
                if isinstance(dec, lzma.LZMADecompressor):
                    chunk = more() if dec.needs_input else b""
                    if not chunk and dec.needs_input:
                        break
                else:
                    chunk = dec.unconsumed_tail or more()
                    if not chunk:
                        break
                out.write(dec.decompress(chunk, CHUNK))
        except (lzma.LZMAError, zlib.error) as exc:
            raise KernelNotUnpackable(f"its payload does not unpack: {exc}") from None
        if not dec.eof:
            raise KernelNotUnpackable("its payload does not unpack: it ends before its compressed stream")
    with open(dest, "rb") as f:
        if f.read(6) != b"\x7fELF\x02\x01":
            raise KernelNotUnpackable("its payload is not a 64-bit little-endian ELF")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as elf:  # only its headers and notes are read
            try:
                pvh = has_pvh_entry(elf)
            except (struct.error, ValueError):
                raise KernelNotUnpackable("its ELF program headers run past its end") from None
    if not pvh:
        raise KernelNotUnpackable("it has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY: CONFIG_PVH is off)")


def has_pvh_entry(elf: bytes | mmap.mmap) -> bool:
    """Whether a 64-bit ELF's PT_NOTE segments hold a Xen note of type PHYS32_ENTRY (what QEMU's
    ``-kernel`` looks for to boot it through PVH)."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(n: int) -> int:
    return (n + 3) & ~3


def fixed_appliance(guestfs_handle: Any, *, cache: Path, choice: str, reporter: Reporter) -> Path | None:
    """The fixed appliance directory to ``set_path`` to, made once per process (and once per supermin
    build on the host); None: boot libguestfs' own appliance (the log says why). The one this process
    chose is made again when it is gone: another process that found supermin's appliance rebuilt made
    its own and removed the older ones (``_prepare``), and libguestfs would find nothing to boot there."""
    key = (str(cache), choice)
    with _lock:
        chosen = _chosen.get(key)
        if key not in _chosen or (chosen is not None and not (chosen / "README.fixed").is_file()):
            _chosen[key] = _choose(guestfs_handle, cache, choice, reporter)
        return _chosen[key]


def _choose(g: Any, cache: Path, choice: str, reporter: Reporter) -> Path | None:
    if choice == "packaged":
        reporter.log("libguestfs: its own appliance and compressed kernel (IMAGEBUILD_APPLIANCE_KERNEL=packaged)")
        return None
    try:
        return _prepare(g, cache, reporter)
    except (ImageBuildError, OSError) as exc:
        reporter.log(f"libguestfs: its own appliance and compressed kernel, not a PVH one: {exc}")
        return None


def _prepare(g: Any, cache: Path, reporter: Reporter) -> Path:
    supermin_d = Path(g.get_path()) / "supermin.d"
    built = Path(g.get_cachedir()) / f".guestfs-{os.getuid()}"
    out = built / "appliance.d"
    if not supermin_d.is_dir():
        raise ImageBuildError(f"{supermin_d} is missing (libguestfs without a supermin appliance)")
    built.mkdir(mode=0o755, exist_ok=True)
    run(["supermin", "--build", "--if-newer", "--lock", built / "lock", "--copy-kernel", "-f", "ext2",
         "--host-cpu", os.uname().machine, supermin_d, "-o", out],
        reporter=reporter, purpose="build or refresh libguestfs' supermin appliance, as libguestfs would")
    parts = {name: (out / name).stat() for name in ("kernel", "initrd", "root")}
    ident = "-".join(f"{s.st_dev:x}.{s.st_ino:x}.{s.st_size:x}" for s in parts.values())
    digest = hashlib.sha256(f"{FORMAT} {g.version()} {ident}".encode()).hexdigest()[:16]
    root = cache / "appliance"
    dest = root / digest
    if (dest / "README.fixed").is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{digest}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        unpack_bzimage(out / "kernel", tmp / "kernel")
        for name in ("initrd", "root"):
            try:
                os.link(out / name, tmp / name)
            except OSError:
                run(["cp", "--sparse=always", out / name, tmp / name], reporter=reporter,
                    purpose=f"copy the supermin appliance's {name} (the cache is on another filesystem)")
        (tmp / "README.fixed").write_text(
            "A libguestfs fixed appliance made by imagebuild (appliance_kernel.py) from the supermin\n"
            f"appliance in {out}: its initrd and root as they are, its kernel unpacked (an ELF vmlinux\n"
            "that QEMU boots through PVH, without the decompressor's 5-6 s under emulation).\n")
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "README.fixed").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():
        if old.name == digest:
            continue
        if old.name.startswith(".tmp-"):  # left by a killed build: its process is gone
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                continue
        shutil.rmtree(old, ignore_errors=True)  # or made from a supermin build that is gone
    reporter.log(f"libguestfs: fixed appliance with the kernel unpacked for PVH at {dest}")
    return dest

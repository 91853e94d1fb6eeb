"""The appliance's kernel unpacked for PVH: the host's own bzImage taken apart (its payload found from
the setup header, the ELF's PVH note found), kernels it cannot boot that way refused with a reason,
and the setting that turns it off."""

from __future__ import annotations

import glob
import gzip
import lzma
import struct
import tracemalloc

import pytest

from imagebuild import appliance_kernel as ak
from imagebuild.events import Reporter
from imagebuild.settings import Settings, SettingsError

pytestmark = pytest.mark.unit

HOST_KERNELS = sorted(glob.glob("/boot/vmlinuz-*"))


@pytest.mark.skipif(not HOST_KERNELS, reason="no /boot/vmlinuz-* (libguestfs' appliance boots the host kernel)")
def test_the_host_kernel_unpacks_to_an_elf_with_a_pvh_entry(tmp_path):
    data = open(HOST_KERNELS[-1], "rb").read()
    elf = unpack(tmp_path, data)
    assert elf.startswith(b"\x7fELF\x02\x01") and len(elf) > 2 * len(data)
    assert ak.has_pvh_entry(elf)


def test_the_kernel_is_unpacked_a_chunk_at_a_time_never_whole_in_memory(tmp_path):
    """The orchestrator's peak RSS stays under the 200 MB goal: the 60 MiB vmlinux is streamed."""
    kernel = tmp_path / "bzImage"
    payload = lzma.compress(elf_with_notes([(b"Xen", ak.XEN_ELFNOTE_PHYS32_ENTRY)]).ljust(96 << 20, b"\0"),
                            format=lzma.FORMAT_XZ)
    kernel.write_bytes(fake_bzimage(payload))
    tracemalloc.start()
    try:
        ak.unpack_bzimage(kernel, tmp_path / "vmlinux")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "vmlinux").stat().st_size == 96 << 20
    assert peak < 32 << 20, f"unpacking held {peak >> 20} MiB at once"


def unpack(tmp_path, data: bytes) -> bytes:
    (tmp_path / "bzImage").write_bytes(data)
    ak.unpack_bzimage(tmp_path / "bzImage", tmp_path / "vmlinux")
    return (tmp_path / "vmlinux").read_bytes()


def fake_bzimage(payload: bytes) -> bytes:
    head = bytearray(4 * 512)   # the boot sector and setup_sects=3 sectors of setup
    head[0x1f1] = 3
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x20f)
    struct.pack_into("<II", head, 0x248, 16, len(payload))
    return bytes(head) + b"\0" * 16 + payload


def elf_with_notes(notes: list[tuple[bytes, int]]) -> bytes:
    """A 64-bit ELF with one PT_NOTE segment holding ``notes`` (name, type), 4-byte descriptors."""
    body = b"".join(struct.pack("<III", len(n) + 1, 4, t) + (n + b"\0").ljust((len(n) + 4) & ~3, b"\0")
                    + b"\0" * 4 for n, t in notes)
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 0x20, 64)          # e_phoff
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)      # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", ak.PT_NOTE, 4, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(ehdr) + phdr + body


def test_a_pvh_note_is_found_among_other_notes_and_its_absence_refused(tmp_path):
    with_pvh = elf_with_notes([(b"GNU", 3), (b"Xen", 6), (b"Xen", ak.XEN_ELFNOTE_PHYS32_ENTRY)])
    without = elf_with_notes([(b"GNU", 3), (b"Xen", 6), (b"Linux", ak.XEN_ELFNOTE_PHYS32_ENTRY)])
    assert ak.has_pvh_entry(with_pvh) and not ak.has_pvh_entry(without)
    assert unpack(tmp_path, fake_bzimage(lzma.compress(with_pvh, format=lzma.FORMAT_XZ))) == with_pvh
    assert unpack(tmp_path, fake_bzimage(gzip.compress(with_pvh))) == with_pvh
    with pytest.raises(ak.KernelNotUnpackable, match="no PVH entry point"):
        unpack(tmp_path, fake_bzimage(lzma.compress(without, format=lzma.FORMAT_XZ)))


@pytest.mark.parametrize("data, why", [
    (b"MZ" + b"\0" * 4096, "not a bzImage"),
    (fake_bzimage(b"\x28\xb5\x2f\xfd" + b"\0" * 64), "magic 28b52ffd; xz and gzip can be"),
    (fake_bzimage(lzma.compress(b"not an elf", format=lzma.FORMAT_XZ)), "not a 64-bit little-endian ELF"),
    (fake_bzimage(lzma.compress(bytes(range(256)) * 64, format=lzma.FORMAT_XZ)[:-40]), "does not unpack"),
])
def test_kernels_that_cannot_boot_through_pvh_are_refused_with_the_reason(tmp_path, data, why):
    with pytest.raises(ak.KernelNotUnpackable, match=why):
        unpack(tmp_path, data)


def test_packaged_boots_libguestfs_own_appliance_and_a_bad_value_is_an_error(tmp_path):
    rep = Reporter()
    assert ak.fixed_appliance(object(), cache=tmp_path, choice="packaged", reporter=rep) is None
    assert not (tmp_path / "appliance").exists()
    assert Settings.from_environ({"IMAGEBUILD_APPLIANCE_KERNEL": "packaged"}).appliance_kernel == "packaged"
    assert Settings.from_environ({}).appliance_kernel == "pvh"
    with pytest.raises(SettingsError, match="IMAGEBUILD_APPLIANCE_KERNEL='bzimage': must be pvh or packaged"):
        Settings.from_environ({"IMAGEBUILD_APPLIANCE_KERNEL": "bzimage"})

"""The initramfs reader the post-check uses (initramfs_files.py) against ``lsinitramfs`` itself, on
initramfs images made by the real tools: GNU cpio (newc, as mkinitramfs calls it, with an early
uncompressed archive as Debian's microcode hook adds) and each compressor the kernel unpacks. A full
build (tests/fullbuild/test_debian12.py) compares the two on the image's own initramfs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuild.initramfs_files import COMMANDS, UnreadableInitramfs, cpio_names, initramfs_names

pytestmark = pytest.mark.unit

COMPRESSORS = {"zstd": ["zstd", "-q", "-c", "-1"], "gzip": ["gzip", "-c", "-n"], "xz": ["xz", "-c", "--check=crc32"],
               "lz4": ["lz4", "-q", "-c", "-l"], "lzop": ["lzop", "-q", "-c"], "bzip2": ["bzip2", "-c"]}


def _cpio(tree: Path) -> bytes:
    """``tree`` as mkinitramfs archives it: every path from ``.``, sorted, newc, owned by root."""
    names = subprocess.run(["find", "."], cwd=tree, check=True, capture_output=True).stdout
    names = b"\n".join(sorted(names.splitlines())) + b"\n"
    return subprocess.run(["cpio", "--quiet", "-R", "0:0", "--reproducible", "-o", "-H", "newc"], cwd=tree,
                          input=names, check=True, capture_output=True).stdout


def _tree(root: Path) -> Path:
    main = root / "main"
    for rel in ("usr/lib/modules/6.1.0-57-amd64/kernel/drivers/block/virtio_blk.ko",
                "usr/lib/modules/6.1.0-57-amd64/kernel/drivers/nvme/host/nvme.ko.zst",
                "scripts/local-top/growroot", "conf/initramfs.conf", "etc/ld.so.cache", "bin/busybox",
                "a name with spaces and ünïcode", "empty"):
        (main / rel).parent.mkdir(parents=True, exist_ok=True)
        (main / rel).write_bytes(b"x" * (len(rel) * 37 % 1500) if rel != "empty" else b"")
    (main / "sbin").symlink_to("usr/sbin")
    (main / "usr/sbin").mkdir()
    (main / "bin/sh").symlink_to("busybox")
    (main / "dev").mkdir()
    return main


def _initramfs(tmp_path: Path, kind: str, early: bool = True) -> Path:
    parts = []
    if early:  # Debian's early microcode archive: uncompressed, before the main one
        ucode = tmp_path / "early/kernel/x86/microcode"
        ucode.mkdir(parents=True)
        (ucode / "AuthenticAMD.bin").write_bytes(bytes(range(256)) * 9)
        parts.append(_cpio(tmp_path / "early"))
    main = _cpio(_tree(tmp_path))
    parts.append(subprocess.run(COMPRESSORS[kind], input=main, check=True, capture_output=True).stdout)
    out = tmp_path / f"initrd.img-{kind}"
    out.write_bytes(b"".join(parts))
    return out


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_lists_what_lsinitramfs_lists(tmp_path, kind):
    if shutil.which(COMPRESSORS[kind][0]) is None or kind in COMMANDS and shutil.which(COMMANDS[kind][0]) is None:
        pytest.fail(f"{COMPRESSORS[kind][0]} is not installed: ./inv test installs it")
    img = _initramfs(tmp_path, kind)
    listed = subprocess.run(["lsinitramfs", str(img)], check=True, capture_output=True, text=True).stdout
    names = initramfs_names(img)
    assert names == listed.splitlines()
    assert "kernel/x86/microcode/AuthenticAMD.bin" in names
    assert "usr/lib/modules/6.1.0-57-amd64/kernel/drivers/block/virtio_blk.ko" in names
    assert "a name with spaces and ünïcode" in names


def test_without_an_early_archive(tmp_path):
    img = _initramfs(tmp_path, "zstd", early=False)
    listed = subprocess.run(["lsinitramfs", str(img)], check=True, capture_output=True, text=True).stdout
    assert initramfs_names(img) == listed.splitlines()


def test_uncompressed_archives_one_after_another(tmp_path):
    """COMPRESS=none: the main archive follows the early one as it is (lsinitramfs stops there with
    "premature end of archive"; the kernel, and this reader, go on): each archive's names as cpio lists
    them, in order, the zeros after each trailer skipped."""
    early_tree = tmp_path / "early/kernel/x86/microcode"
    early_tree.mkdir(parents=True)
    (early_tree / "GenuineIntel.bin").write_bytes(b"u" * 5000)
    early, main = _cpio(tmp_path / "early"), _cpio(_tree(tmp_path))
    assert len(early) % 512 == 0 and early.endswith(bytes(4))   # cpio pads each archive with zeros
    img = tmp_path / "initrd.img"
    img.write_bytes(early + main)

    def listed(archive: bytes) -> list[str]:
        return subprocess.run(["cpio", "--quiet", "-t"], input=archive, check=True, capture_output=True
                              ).stdout.decode().splitlines()

    assert initramfs_names(img) == listed(early) + listed(main)
    assert cpio_names(early + main) == (listed(early) + listed(main), len(early) + len(main))


def test_refuses_what_it_does_not_know(tmp_path):
    good = _initramfs(tmp_path, "gzip")
    data = good.read_bytes()
    early_end = cpio_names(data)[1]
    unknown = tmp_path / "unknown"
    unknown.write_bytes(data[:early_end] + b"PK\x03\x04 not a kernel format")
    with pytest.raises(UnreadableInitramfs, match=rf"^{unknown}: byte {early_end} starts neither"):
        initramfs_names(unknown)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(data[:early_end] + data[early_end:-40])
    with pytest.raises(UnreadableInitramfs, match=f"^{truncated}: its gzip stream does not decompress"):
        initramfs_names(truncated)
    (tmp_path / "z").mkdir()
    zstd = _initramfs(tmp_path / "z", "zstd")
    damaged_zstd = tmp_path / "damaged-zstd"
    damaged_zstd.write_bytes(zstd.read_bytes()[:-40])   # the tool's own failure, reported the same way
    with pytest.raises(UnreadableInitramfs, match=f"^{damaged_zstd}: its zstd stream does not decompress: "):
        initramfs_names(damaged_zstd)
    short = tmp_path / "short"
    short.write_bytes(data[:200])
    with pytest.raises(UnreadableInitramfs, match=f"^{short}: "):
        initramfs_names(short)
    damaged = tmp_path / "damaged"
    damaged.write_bytes(data[:54] + b"zzzzzzzz" + data[62:])
    with pytest.raises(UnreadableInitramfs, match="a damaged cpio header at byte 0"):
        initramfs_names(damaged)

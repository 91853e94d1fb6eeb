"""``imagediff.compare_images`` says where two disks differ, from the top down, on real small disks (a GPT,
an ext4 partition written by mkfs.ext4 -d, qcow2 made by qemu-img): the same bytes; the same disk in
another qcow2 encoding; and a file whose content and mode changed, named with how."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuild.imagediff import compare_images

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"),
                                 reason="root, e2fsprogs and loop devices")]
START = 2048 * 512


def _disk(tmp: Path, name: str, files: dict[str, tuple[str, int]]) -> Path:
    tree = tmp / f"tree-{name}"
    for rel, (text, mode) in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
        os.chmod(tree / rel, mode)
    for p in tree.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    raw = tmp / f"{name}.raw"
    with raw.open("wb") as f:
        f.truncate(64 * 2**20)
    subprocess.run(["sfdisk", "-q", str(raw)], input="label: gpt\nlabel-id: 3E5F6A1C-0000-4000-8000-000000000001\n"
                   "start=2048, type=L, uuid=3E5F6A1C-0000-4000-8000-000000000002\n", text=True, check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), "-U", "3e5f6a1c-0000-4000-8000-000000000003",
                    "-E", f"offset={START},hash_seed=3e5f6a1c-0000-4000-8000-000000000004", str(raw), "40M"],
                   check=True, env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"))
    qcow2 = tmp / f"{name}.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    return qcow2


def test_same_bytes_same_content_and_a_named_file(tmp_path):
    base = {"etc/os-release": ("ID=debian\n", 0o644), "usr/bin/tool": ("#!/bin/sh\n", 0o755)}
    a = _disk(tmp_path, "a", base)
    assert compare_images(a, a, work=tmp_path / "w1").same

    other_encoding = tmp_path / "a-compressed.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", str(a), str(other_encoding)], check=True)
    diff = compare_images(a, other_encoding, work=tmp_path / "w2")
    assert not diff.same and diff.same_content and "only the qcow2 encoding differs" in diff.explain()

    b = _disk(tmp_path, "b", {**base, "usr/bin/tool": ("#!/bin/bash\n", 0o700)})
    diff = compare_images(a, b, work=tmp_path / "w3")
    assert not diff.same_content and diff.partitions == [1]
    text = diff.explain()
    assert "partition 1 (ext4) differs" in text
    line = next(line for line in text.splitlines() if "/usr/bin/tool" in line)
    assert "content" in line and "mode 755 → 700" in line and "size 10 → 12" in line
    assert "/etc/os-release" not in text
    assert not (tmp_path / "w3").exists()  # its raw copies and mount points are gone

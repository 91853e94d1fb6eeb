"""The compression that runs beside the boot test, on real (small) disks with the real qemu-img: the
compare catches an artifact that differs from the disk that booted, a disk written meanwhile is refused,
and a stop leaves no partial file and no qemu-img behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from imagebuild.errors import ImageBuildError
from imagebuild.procs import descendants, processes_mentioning
from imagebuild.sparsify import NICE_BESIDE, CompressBeside, same_guest_data

pytestmark = pytest.mark.unit


def raw_disk(path: Path, mib: int, *, random_mib: int = 1) -> Path:
    with open(path, "wb") as f:
        f.truncate(mib * 2**20)
        f.write(b"imagebuild" * 1000)
        f.seek(mib * 2**20 // 2)
        f.write(os.urandom(random_mib * 2**20))  # incompressible: the compression takes a while
    return path


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_same_guest_data_passes_a_faithful_copy_and_names_a_different_one(tmp_path):
    disk = raw_disk(tmp_path / "disk.raw", 8)
    art = tmp_path / "a.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(disk), str(art))
    same_guest_data(disk, "raw", art)
    with open(disk, "r+b") as f:  # one byte of guest data differs
        f.seek(3 * 2**20)
        f.write(b"x")
    with pytest.raises(ImageBuildError, match=r"a\.qcow2 does not hold the same guest data"):
        same_guest_data(disk, "raw", art)


def test_the_compare_finds_data_only_one_side_holds_and_qemu_img_compares_what_it_cannot_read(tmp_path):
    """Clusters the artifact holds where the disk has a hole, and the reverse, are differences; an
    artifact the cluster reader does not take (128 KiB clusters) is compared by qemu-img, which finds
    the same."""
    disk = raw_disk(tmp_path / "disk.raw", 8)
    art, big = tmp_path / "a.qcow2", tmp_path / "big.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(disk), str(art))
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=131072", str(disk), str(big))
    for a in (art, big):
        same_guest_data(disk, "raw", a)
    with open(disk, "r+b") as f:  # data where the artifact has nothing
        f.seek(6 * 2**20)
        f.write(b"late")
    for a in (art, big):
        with pytest.raises(ImageBuildError, match="does not hold the same guest data"):
            same_guest_data(disk, "raw", a)
    with open(disk, "r+b") as f:  # a hole where the artifact holds data
        f.seek(6 * 2**20)
        f.write(b"\0" * 4)
        f.seek(0)
        f.write(b"\0" * 10000)
    with pytest.raises(ImageBuildError, match="differ in the cluster at guest offset 0"):
        same_guest_data(disk, "raw", art)


def test_compress_beside_returns_the_checked_artifact(tmp_path):
    disk = raw_disk(tmp_path / "disk.raw", 16)
    dest = tmp_path / "img.qcow2"
    beside = CompressBeside(disk, "raw", dest, compat="1.1", reporter=_quiet())
    info = beside.result()
    assert dest.is_file() and info.file == "img.qcow2" and info.virtual_size == 16 * 2**20
    assert info.compression == "zlib" and beside.seconds > 0
    assert not list(tmp_path.glob(".*.partial"))


def test_a_disk_written_after_its_compare_is_refused(tmp_path):
    """The compare proves the artifact against the disk as it was; a write after it (while the boot test
    still runs) makes the disk's size or mtime change, and the result is refused."""
    disk = raw_disk(tmp_path / "disk.raw", 16)
    beside = CompressBeside(disk, "raw", tmp_path / "img.qcow2", compat="1.1", reporter=_quiet())
    while beside._thread.is_alive():
        time.sleep(0.02)
    assert beside.error is None
    with open(disk, "r+b") as f:  # the boot test wrote its backing file: nothing the compare proved holds
        f.seek(2**20)
        f.write(b"written")
    os.utime(disk, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ImageBuildError, match="was written while it was being compressed and booted"):
        beside.result()


def test_stop_leaves_no_partial_file_and_nothing_running(tmp_path):
    disk = raw_disk(tmp_path / "disk.raw", 512, random_mib=256)  # seconds of zlib
    dest = tmp_path / "img.qcow2"
    partial = tmp_path / ".img.qcow2.partial"
    beside = CompressBeside(disk, "raw", dest, compat="1.1", reporter=_quiet())
    deadline = time.monotonic() + 10
    while not (partial.exists() and partial.stat().st_size > 2**20):
        assert time.monotonic() < deadline, "the compression never started writing"
        time.sleep(0.02)
    # it yields the cores to the boot test's guests (its threads' nice value); the build's own threads
    # keep their priority
    nice = [int(Path(f"/proc/self/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[16])
            for t in os.listdir("/proc/self/task")]
    assert NICE_BESIDE in nice and os.getpriority(os.PRIO_PROCESS, 0) == 0
    beside.stop()
    assert not [p for p in processes_mentioning(dest.name) if p in descendants()]
    assert not dest.exists() and not list(tmp_path.glob(".*.partial*"))
    with pytest.raises(ImageBuildError):
        beside.result()


def _quiet():
    from imagebuild.events import NULL_REPORTER
    return NULL_REPORTER

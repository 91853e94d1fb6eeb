"""The seed and the times a reproducible build derives its bytes from (``imagebuild.reproducible``), and the
ext4 recipe they serve: two ``mkfs.ext4 -d`` of one tree, a second apart, after the tree was read and
its times clamped, give the same bytes once debugfs has dated every inode (the host's e2fsprogs 1.47.0
copies ctime from the tree)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from imagebuild.disklayout import layout_for
from imagebuild.events import NULL_REPORTER
from imagebuild.install.reseal import date_inodes
from imagebuild.recipe import Firmware, load_recipe, to_data
from imagebuild.reproducible import (
    build_seed,
    clamp_tree_times,
    derived_uuid,
    source_date_epoch,
    vfat_id,
)

pytestmark = pytest.mark.unit
EPOCH = 1_700_000_000


def test_one_recipe_one_seed_and_every_identifier_from_it():
    a, b = build_seed(to_data(load_recipe("debian12"))), build_seed(to_data(load_recipe("debian12")))
    assert a == b != build_seed(to_data(load_recipe("debian13")))
    root = derived_uuid(a, "root-fs")
    assert root == derived_uuid(b, "root-fs") != derived_uuid(a, "ext4-hash-seed")
    assert uuid.UUID(root).version == 4 and uuid.UUID(root).variant == uuid.RFC_4122
    assert len(vfat_id(a)) == 8 and vfat_id(a) == vfat_id(b) and int(vfat_id(a), 16) >= 0


def test_the_partition_table_carries_derived_ids():
    ids = lambda purpose: derived_uuid("s" * 64, purpose)  # noqa: E731
    gpt = layout_for(Firmware.HYBRID).sfdisk_script("disk.raw", ids)
    assert f"label-id: {ids('disk-label').upper()}" in gpt and f"uuid={ids('partition-root').upper()}" in gpt
    dos = layout_for(Firmware.BIOS).sfdisk_script("disk.raw", ids)
    assert "label: dos" in dos and f"label-id: 0x{ids('disk-label')[:8]}" in dos


def _tree(root: Path) -> Path:
    """A tiny installed system: two packages' files (dated as their .debs would), an install-time file."""
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    for name, date in (("tool", EPOCH - 100), ("other", EPOCH)):
        (root / f"usr/bin/{name}").write_text(name)
        os.utime(root / f"usr/bin/{name}", (date, date))
        (root / f"var/lib/dpkg/info/{name}.list").write_text(f"/.\n/usr\n/usr/bin\n/usr/bin/{name}\n")
        (root / f"usr/share/doc/{name}").mkdir(parents=True)
        (root / f"usr/share/doc/{name}/changelog.Debian.gz").write_bytes(b"")
        os.utime(root / f"usr/share/doc/{name}/changelog.Debian.gz", (date, date))
    (root / "usr/share/doc/tool-data").symlink_to("tool")  # a doc dir shared with another package
    (root / "etc/made-at-install").write_text("now")
    os.symlink("tool", root / "usr/bin/link")
    return root


def test_source_date_epoch_is_the_newest_packaged_file_not_the_install(tmp_path):
    root = _tree(tmp_path / "root")
    assert source_date_epoch(root) == EPOCH  # /etc/made-at-install (now) is not a package's date
    assert clamp_tree_times(root, EPOCH) >= 3  # etc/made-at-install, the dirs made now
    assert (root / "etc/made-at-install").stat().st_mtime == EPOCH
    assert (root / "usr/bin/tool").stat().st_mtime == EPOCH - 100  # older stays


def test_no_dpkg_database_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="no dpkg database"):
        source_date_epoch(tmp_path)


@pytest.mark.skipif(not shutil.which("mkfs.ext4") or not shutil.which("debugfs"), reason="e2fsprogs")
def test_two_ext4_writes_of_one_tree_are_byte_identical(tmp_path):
    root = _tree(tmp_path / "root")
    clamp_tree_times(root, EPOCH)

    def write(name: str) -> str:
        img = tmp_path / name
        img.write_bytes(b"")
        os.truncate(img, 32 * 2**20)
        env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH))
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), "-U", derived_uuid("s", "root-fs"),
                        "-E", f"offset=1048576,root_owner=0:0,hash_seed={derived_uuid('s', 'hash')}", str(img),
                        "16M"], check=True, env=env)
        date_inodes(f"{img}?offset=1048576", EPOCH, tmp_path / f"{name}.cmds", NULL_REPORTER)  # the seal's own
        return hashlib.sha256(img.read_bytes()).hexdigest()

    first = write("one.img")
    (root / "usr/bin/tool").read_text()  # a read between the two writes
    time.sleep(1.1)
    os.utime(root / "etc", None)  # and a touch: clamped again below, as the build does
    clamp_tree_times(root, EPOCH)
    assert write("two.img") == first


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img")
def test_one_disk_compresses_to_one_artifact_and_a_stop_stops_it(tmp_path):
    import threading

    from imagebuild.events import NULL_REPORTER
    from imagebuild.recompress import Stopped
    from imagebuild.sparsify import compress

    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(96 * 2**20)
        for i in range(0, 96, 7):  # data here and there, text (compressible) and random (stored)
            f.seek(i * 2**20)
            f.write((b"imagebuild %d " % i) * 20000 if i % 2 else os.urandom(300_000))
    a = compress(disk, "raw", tmp_path / "a.qcow2", compat="1.1", reporter=NULL_REPORTER)
    b = compress(disk, "raw", tmp_path / "b.qcow2", compat="1.1", reporter=NULL_REPORTER)
    assert a.sha256 == b.sha256 and a.content_sha256 == b.content_sha256
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(disk), str(tmp_path / "a.qcow2")],
                   check=True, capture_output=True)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        compress(disk, "raw", tmp_path / "c.qcow2", compat="1.1", reporter=NULL_REPORTER, stop=stop)
    assert not (tmp_path / "c.qcow2").exists() and not list(tmp_path.glob(".c.qcow2*"))

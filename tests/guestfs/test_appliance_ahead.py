"""The libguestfs appliance launched ahead, on a disk whose filesystem is written while it boots.

A bootstrap build starts the appliance on the partitioned, still blank disk and writes the root
filesystem from the host meanwhile. Here the appliance has booted on the blank disk and read the blank
partition (its kernel scanned the table at boot, and a read of the superblock area returns zeros),
the host then writes the filesystem, and the appliance, opened through ``open_guest(ahead=...)`` and
mounted by the layout, must read the filesystem as written. (Linux drops a block device's page cache at
its last close, so this passes with or without the BLKFLSBUF that ``take`` adds for a device something
still holds open.) And an install that fails while the appliance boots must leave no appliance."""

from __future__ import annotations

import time
import uuid

import pytest

from imagebuild.appliance import ApplianceAhead, open_guest
from imagebuild.events import Reporter
from imagebuild.procs import processes_mentioning
from imagebuild.recipe import Firmware

from ..phony import MIB, _run, make_tree

pytestmark = pytest.mark.guestfs

SIZE_MIB = 64


def blank_partitioned(path):
    with open(path, "wb") as f:
        f.truncate(SIZE_MIB * MIB)
    _run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path),
         input=f"label: dos\nstart=2048, size={(SIZE_MIB - 1) * 2048}, type=83\n")


def test_the_filesystem_written_during_the_launch_is_what_the_appliance_reads(tmp_path, accel):
    disk = tmp_path / "disk.raw"
    blank_partitioned(disk)
    ahead = ApplianceAhead(disk, "raw", accel=accel.accel, reporter=Reporter(), network=False,
                           firmware=Firmware.BIOS)
    try:
        ahead._thread.join(timeout=300)
        assert not ahead._thread.is_alive() and ahead._error is None
        # the appliance has read the blank superblock area of partition 1
        assert bytes(ahead.g.pread_device("/dev/sda1", 4096, 0)) == b"\0" * 4096
        make_tree(tmp_path / "tree", {"/etc/fstab": "LABEL=root / ext4 defaults 0 1\n",
                                      "/etc/written-late": "after the launch\n"})
        fs_uuid = str(uuid.uuid4())
        _run("mkfs.ext4", "-q", "-F", "-d", str(tmp_path / "tree"), "-U", fs_uuid,
             "-E", f"offset={MIB},root_owner=0:0", str(disk), f"{(SIZE_MIB - 1) * 1024}k")
        with open_guest(disk, "raw", accel=accel.accel, firmware=Firmware.BIOS, ahead=ahead) as guest:
            assert guest.g.vfs_uuid("/dev/sda1") == fs_uuid
            assert guest.read("/etc/written-late") == "after the launch\n"
    finally:
        ahead.close()
    assert not processes_mentioning(str(disk))


def test_an_install_that_fails_while_the_appliance_boots_leaves_no_appliance(tmp_path, accel):
    disk = tmp_path / "disk.raw"
    blank_partitioned(disk)
    ahead = ApplianceAhead(disk, "raw", accel=accel.accel, reporter=Reporter(), network=False,
                           firmware=Firmware.BIOS)
    deadline = time.monotonic() + 30
    while not processes_mentioning(str(disk)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the appliance's qemu is up and booting
    assert processes_mentioning(str(disk)), "the appliance never started"
    t = time.monotonic()
    ahead.close()  # what the build's ExitStack does when the install fails
    assert time.monotonic() - t < 15
    assert not processes_mentioning(str(disk))
    assert not ahead._thread.is_alive()

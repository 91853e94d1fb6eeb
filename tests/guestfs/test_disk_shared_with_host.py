"""The appliance lets go of the disk for the host and takes it back (grub on the host: the appliance
runs the steps, the host runs grub through a loop device, the appliance runs the post-check).

What the appliance wrote must be in the disk file once it released the disk, and what the host then
wrote through a loop device must be what the appliance reads after it mounted the disk again, though
its kernel had read the same blocks before."""

from __future__ import annotations

import subprocess

import pytest

from imagebuild.appliance import open_guest
from imagebuild.events import Reporter
from imagebuild.install.hostgrub import loop_disk
from imagebuild.recipe import Firmware

from ..phony import make_disk, make_tree, read_file

pytestmark = pytest.mark.guestfs


def test_writes_cross_between_the_appliance_and_the_host(tmp_path, accel):
    make_tree(tmp_path / "tree", {"/etc/fstab": "LABEL=root / ext4 defaults 0 1\n",
                                  "/etc/shared": "written by mkfs\n"})
    disk = tmp_path / "disk.raw"
    make_disk(disk, tmp_path / "tree")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open_guest(disk, "raw", accel=accel.accel, firmware=Firmware.BIOS) as guest:
        assert guest.read("/etc/shared") == "written by mkfs\n"   # the appliance's kernel has read it
        guest.write("/etc/from-appliance", "written in the appliance\n")
        guest.release_disk()
        assert read_file(disk, "/etc/from-appliance") == "written in the appliance\n"
        with loop_disk(disk, Reporter()) as loop:
            subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount -t ext4 {loop.device}p1 {mnt} && echo 'written by the host' > {mnt}/etc/shared "
                            f"&& umount {mnt}"], check=True)
        guest.remount()
        assert guest.read("/etc/shared") == "written by the host\n"
        assert guest.read("/etc/from-appliance") == "written in the appliance\n"

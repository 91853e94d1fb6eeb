"""The boot loader goes to the disk that holds `/`, by the appliance kernel's own device name.

CI once saw the appliance's kernel call our disk /dev/sdb (its own root disk took sda) while the
libguestfs API still called it /dev/sda: grub-install on the API name then hit the appliance's disk.
Here a decoy disk is added first, so our disk is the second one under every naming, and the name
found must be the disk whose size is ours, read from the kernel's /sys independently."""

from __future__ import annotations

import shutil

import guestfs
import pytest

from imagebuild.accel import Accel
from imagebuild.events import Reporter
from imagebuild.guest import Guest

from ..phony import MIB, make_disk, make_tree

pytestmark = pytest.mark.guestfs

OURS_MIB, DECOY_MIB = 72, 40


def busybox_tree(root):
    make_tree(root, {"/etc/fstab": "LABEL=root / ext4 defaults 0 1\n"},
              symlinks={"/bin/cat": "busybox", "/bin/readlink": "busybox", "/bin/sh": "busybox"})
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for mountpoint in ("dev", "proc", "sys"):  # libguestfs binds these only where they exist
        (root / mountpoint).mkdir()


def test_root_disk_is_named_as_the_appliance_kernel_names_it(tmp_path, accel):
    busybox_tree(tmp_path / "tree")
    ours, decoy = tmp_path / "ours.raw", tmp_path / "decoy.raw"
    make_disk(ours, tmp_path / "tree", size_mib=OURS_MIB)
    with open(decoy, "wb") as f:
        f.truncate(DECOY_MIB * MIB)
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend("direct")
        if accel.accel is Accel.TCG:
            g.set_backend_settings(["force_tcg"])
        g.add_drive_opts(str(decoy), format="raw", readonly=True)
        g.add_drive_opts(str(ours), format="raw", readonly=True)
        g.launch()
        g.mount_ro("/dev/sdb1", "/")
        guest = Guest(g, Reporter())
        disk, part = guest.kernel_disk_of_root()
        assert part == 1
        name = disk.removeprefix("/dev/")
        sectors = int(guest.command(["cat", f"/sys/block/{name}/size"]))
        assert sectors * 512 == OURS_MIB * MIB, f"{disk} is not our disk ({sectors} sectors)"
    finally:
        g.close()


"""The appliance launched the way every build launches it boots its kernel through PVH: the boot
parameters the kernel reports are the ones its PVH entry fills in (boot protocol 2.12), not those of
QEMU's bzImage loader (2.15 for Debian 12's kernel), and the kernel is the host's own."""

from __future__ import annotations

import os

import pytest

from imagebuild import settings
from imagebuild.appliance import open_guest
from imagebuild.events import Reporter

pytestmark = pytest.mark.guestfs


def test_a_build_s_appliance_boots_the_host_kernel_through_pvh(tmp_path, accel):
    disk = tmp_path / "blank.raw"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    settings.configure(settings.Settings.from_environ({**os.environ, "IMAGEBUILD_APPLIANCE_KERNEL": "pvh"}))
    rep = Reporter()
    rep.attach(tmp_path / "build.log")
    try:
        with open_guest(disk, "raw", accel=accel.accel, reporter=rep, readonly=True, mount=False) as guest:
            fixed = guest.g.get_path()
            out = guest.g.debug("sh", ["cat /sys/kernel/boot_params/version; uname -r"]).split()
    finally:
        settings.configure(None)
        rep.close()
    assert os.path.isfile(os.path.join(fixed, "README.fixed")), fixed
    assert out[0] == "0x020c", f"boot protocol {out[0]}: the kernel came through QEMU's bzImage loader, not PVH"
    assert f"libguestfs: appliance {fixed} (its kernel unpacked: booted through PVH)" in \
        (tmp_path / "build.log").read_text()
    assert os.path.isfile(f"/lib/modules/{out[1]}/modules.dep")  # the host's kernel, its modules beside it


def test_a_fixed_appliance_removed_by_another_process_is_made_again(tmp_path):
    """A build that finds supermin's appliance rebuilt makes its own fixed appliance and removes the older
    ones; a process that chose one of those earlier (a test session, a long-lived caller) makes it again
    rather than handing libguestfs a directory that is gone (the suite once failed so: "cannot find any
    suitable libguestfs supermin, fixed or old-style appliance")."""
    import shutil

    import guestfs

    from imagebuild.appliance_kernel import fixed_appliance
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        first = fixed_appliance(g, cache=tmp_path, choice="pvh", reporter=Reporter())
        assert first is not None and (first / "README.fixed").is_file()
        assert fixed_appliance(g, cache=tmp_path, choice="pvh", reporter=Reporter()) == first
        shutil.rmtree(first)  # what another process's _prepare does to an appliance it did not make
        again = fixed_appliance(g, cache=tmp_path, choice="pvh", reporter=Reporter())
        assert again is not None and (again / "README.fixed").is_file() and (again / "kernel").is_file()
    finally:
        g.close()

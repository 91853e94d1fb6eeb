"""Plant every identity marker in a phony guest, generalize it through the real libguestfs appliance,
and read the result back on the host (debugfs), independently of the code under test."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

import pytest

from imagebuild.appliance import open_guest
from imagebuild.customize import StepContext, customize, post_check, selected_steps
from imagebuild.errors import CustomizeFailed
from imagebuild.events import Reporter
from imagebuild.recipe import Firmware

from ..phony import MAC, MARKED, NM_UUID, RECIPE, exists, listdir, make_disk, make_layout_disk, make_tree, read_file

pytestmark = pytest.mark.guestfs

@pytest.fixture(scope="module")
def marked_disk(tmp_path_factory):
    d = tmp_path_factory.mktemp("phony")
    tree = d / "tree"
    make_tree(tree, MARKED)
    pristine = d / "pristine.raw"
    fs_uuid = make_disk(pristine, tree)
    # fstab needs the real UUID: rebuild with it substituted (cheap: a 64 MiB disk)
    (tree / "etc/fstab").write_text(MARKED["/etc/fstab"].replace("@ROOT@", fs_uuid))
    make_disk(pristine, tree)
    work = d / "work.raw"
    shutil.copyfile(pristine, work)  # tests write a copy: the fixture stays pristine
    return pristine, work


def test_every_marker_is_removed_and_the_post_check_passes(marked_disk, accel):
    pristine, disk = marked_disk
    # sanity: the markers really are in the pristine disk
    assert MAC in read_file(pristine, "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert exists(pristine, "/etc/ssh/ssh_host_rsa_key")

    # hotplug needs a bootable tree (update-grub, an initramfs): the full build and its boot test prove it
    steps = [s for s in selected_steps(RECIPE) if s.name != "hotplug"]
    without_machine_id = [s for s in steps if s.name != "machine-id"]
    rep = Reporter()
    with open_guest(disk, "raw", accel=accel.accel, reporter=rep, network=False) as guest:
        ctx = StepContext(RECIPE, network=False)
        # 1. the post-check catches what a skipped step leaves behind
        customize(guest, ctx, without_machine_id)
        with pytest.raises(CustomizeFailed) as e:
            post_check(guest, ctx, steps)
        assert "machine-id: /etc/machine-id is not empty" in str(e.value)
        assert "copy, not a link" in str(e.value)
        # 2. all steps, twice: idempotent, and nothing is left
        customize(guest, ctx, steps)
        post_check(guest, ctx, steps)
        customize(guest, ctx, steps)
        post_check(guest, ctx, steps)

    ifcfg = read_file(disk, "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert "HWADDR" not in ifcfg and "UUID" not in ifcfg and "MACADDR" not in ifcfg
    assert "BOOTPROTO=dhcp" in ifcfg and "DEVICE=eth0" in ifcfg
    nm = read_file(disk, "/etc/NetworkManager/system-connections/eth0.nmconnection")
    assert NM_UUID not in nm and MAC.upper() not in nm and "mac-address" not in nm
    assert "id=eth0" in nm and "method=auto" in nm
    assert not exists(disk, "/etc/udev/rules.d/70-persistent-net.rules")
    interfaces = read_file(disk, "/etc/network/interfaces")
    assert "hwaddress" not in interfaces and "iface eth0 inet dhcp" in interfaces
    assert not exists(disk, "/var/lib/dhcp/dhclient.eth0.leases")
    assert not exists(disk, "/var/lib/NetworkManager/internal-x-eth0.lease")
    assert read_file(disk, "/etc/machine-id") == ""
    assert not exists(disk, "/var/lib/systemd/random-seed")
    assert [n for n in listdir(disk, "/etc/ssh") if n.startswith("ssh_host_")] == []
    unit = read_file(disk, "/etc/systemd/system/imagebuild-ssh-hostkeys.service")
    assert "ssh-keygen -q -t ed25519" in unit and "Before=ssh.service" in unit and "-t rsa" not in unit
    rsa = read_file(disk, "/etc/systemd/system/imagebuild-ssh-rsa-hostkey.service")
    assert "ssh-keygen -q -t rsa" in rsa and "After=ssh.service" in rsa and "reload" in rsa
    for name in ("imagebuild-ssh-hostkeys.service", "imagebuild-ssh-rsa-hostkey.service"):
        assert exists(disk, f"/etc/systemd/system/multi-user.target.wants/{name}")
    assert read_file(disk, "/etc/hostname").strip() == "localhost"
    assert "10.1.2.3" not in (read_file(disk, "/etc/resolv.conf") or "")
    fstab = read_file(disk, "/etc/fstab")
    assert "swap" not in fstab and " / ext4 " in fstab and "proc /proc" in fstab
    assert not exists(disk, "/swapfile")
    assert not exists(disk, "/etc/initramfs-tools/conf.d/resume")
    assert read_file(disk, "/var/log/syslog") == "" and read_file(disk, "/var/log/apt/history.log") == ""
    assert not exists(disk, "/var/log/syslog.1.gz")
    assert listdir(disk, "/var/log/journal") == []
    assert not exists(disk, "/var/log/installer")
    for gone in ("/root/.bash_history", "/home/alice/.bash_history", "/root/anaconda-ks.cfg",
                 "/root/original-ks.cfg", "/var/cache/apt/archives/vim_9.0_amd64.deb",
                 "/var/cache/apt/pkgcache.bin",
                 "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"):
        assert not exists(disk, gone), gone
    assert listdir(disk, "/tmp") == [] and listdir(disk, "/var/tmp") == []
    # the pristine fixture was never written
    assert MAC in read_file(pristine, "/etc/sysconfig/network-scripts/ifcfg-eth0")


def test_bad_layouts_are_rejected_with_every_reason(tmp_path, accel):
    tree = tmp_path / "tree"
    make_tree(tree, {"/etc/fstab": "LABEL=root / ext4 defaults 0 1\n"})
    disk = tmp_path / "bad.raw"
    make_disk(disk, tree, size_mib=96, extra=[("swap", 16), ("ext4", 24)])
    with pytest.raises(CustomizeFailed) as e, open_guest(disk, "raw", accel=accel.accel, readonly=True):
        pass
    msg = str(e.value)
    assert "swap partition(s): /dev/sda2" in msg
    assert "expected exactly one Linux filesystem, found 2" in msg
    assert "expected 1 partition(s) for a bios image, found 3" in msg


def test_esp_and_bios_boot_partition_accepted_on_hybrid_refused_on_bios(tmp_path, accel):
    """The same phony hybrid disk: its ESP (mounted at /boot/efi) and BIOS boot partition pass the layout
    rules of a hybrid image, and each is named as a reason when the image claims to be bios."""
    tree = tmp_path / "tree"
    make_tree(tree, {"/etc/fstab": "placeholder\n", "/boot/efi/.keep": ""})
    disk = tmp_path / "hybrid.raw"
    ids = make_layout_disk(disk, tree, Firmware.HYBRID)
    fstab = f"UUID={ids['root']} / ext4 errors=remount-ro 0 1\nUUID={ids['esp']} /boot/efi vfat umask=0077 0 2\n"
    recipe = dataclasses.replace(RECIPE, image=dataclasses.replace(RECIPE.image, firmware=Firmware.HYBRID))
    layout_step = [s for s in selected_steps(recipe) if s.name == "layout"]
    with open_guest(disk, "raw", accel=accel.accel, firmware=Firmware.HYBRID) as guest:
        assert (guest.root_device, guest.esp_device) == ("/dev/sda1", "/dev/sda15")
        guest.write("/etc/fstab", fstab)
        guest.write("/boot/efi/EFI/BOOT/probe.txt", "on the ESP")  # written through the mounted vfat
        post_check(guest, StepContext(recipe, network=False), layout_step)
        # a second /boot/efi line, or none, is named by the layout check
        guest.write("/etc/fstab", fstab.splitlines()[0] + "\n")
        assert any("mounts the EFI system partition at /boot/efi 0 times" in p
                   for p in layout_step[0].check(guest, StepContext(recipe, network=False)))
    mdir = subprocess.run(["mdir", "-b", "-i", f"{disk}@@{4 * 1024 * 1024}", "::/EFI/BOOT"], capture_output=True,
                          text=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    assert "PROBE.TXT" in mdir.stdout.upper(), mdir.stdout + mdir.stderr  # read back on the host (mtools)
    with pytest.raises(CustomizeFailed) as e, open_guest(disk, "raw", accel=accel.accel, readonly=True,
                                                         firmware=Firmware.BIOS):
        pass
    for reason in ("an EFI system partition (/dev/sda15) on a bios image",
                   "a BIOS boot partition (/dev/sda14) on a bios image",
                   "a gpt partition table: a bios image has msdos", "expected 1 partition(s) for a bios image"):
        assert reason in str(e.value), str(e.value)


def test_missing_packages_without_network_fail_clearly(tmp_path, accel):
    tree = tmp_path / "tree"
    make_tree(tree, {"/etc/fstab": "LABEL=root / ext4 defaults 0 1\n", "/var/lib/dpkg/status": ""})
    disk = tmp_path / "nopkgs.raw"
    make_disk(disk, tree)
    recipe = dataclasses.replace(RECIPE)
    steps = [s for s in selected_steps(recipe) if s.name == "packages"]
    with open_guest(disk, "raw", accel=accel.accel, network=False) as guest, \
            pytest.raises(CustomizeFailed, match="no network to install them: net-tools lrzsz"):
        customize(guest, StepContext(recipe, network=False), steps)

"""grub on the host (imagebuild/install/hostgrub.py): the script each layout gets, the loop device
attached with its partitions and always detached (after a failure too, and by `invoke clean` after a
killed build). The image's own grub runs for real in every full build, whose boot test then boots it
through BIOS and UEFI (tests/fullbuild)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imagebuild.disklayout import MIB, layout_for
from imagebuild.errors import InstallFailed
from imagebuild.events import Reporter
from imagebuild.install import hostgrub
from imagebuild.recipe import Firmware

from ..phony import make_disk, make_layout_disk

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mount namespaces need root")]

LOOP = hostgrub.LoopDisk("/dev/loop7", {1: (259, 4), 14: (259, 5), 15: (259, 6)})


def loops_backed_by(path: Path) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], capture_output=True,
                         text=True).stdout
    return [d["name"] for d in json.loads(out or "{}").get("loopdevices", [])
            if (d.get("back-file") or "").startswith(str(path))]


@pytest.mark.parametrize("firmware", list(Firmware))
def test_script_per_layout(firmware, monkeypatch, tmp_path):
    monkeypatch.setattr(hostgrub.LoopDisk, "majmin", property(lambda self: (7, 7)))
    layout = layout_for(firmware)
    loop = hostgrub.LoopDisk(LOOP.device, {p.number: LOOP.numbers[p.number] for p in layout.partitions})
    text = hostgrub.script(layout, tmp_path / "disk.raw", loop, tmp_path / "root")
    subprocess.run(["sh", "-n", "-c", text], check=True)
    lines = text.splitlines()
    # the image's /dev, never the host's: a tmpfs first, then the disk under its guest name
    assert lines[1].startswith("mount -t tmpfs") and lines[1].endswith(" /dev")
    assert "mknod -m 0600 /dev/sda b 7 7" in lines
    for p in layout.partitions:
        assert f"mknod -m 0600 /dev/sda{p.number} b {' '.join(map(str, LOOP.numbers[p.number]))}" in lines
    assert f"mount -t ext4 /dev/sda{layout.root.number} {tmp_path / 'root'}" in lines
    assert f'ln -s ../../sda{layout.root.number} "/dev/disk/by-uuid/$(blkid -o value -s UUID ' \
           f'/dev/sda{layout.root.number})"' in lines
    bios = any("--target=i386-pc /dev/sda" in ln for ln in lines)
    efi = any("--target=x86_64-efi" in ln and "--uefi-secure-boot" in ln for ln in lines)
    assert bios == (firmware is not Firmware.UEFI)
    assert efi == (firmware is not Firmware.BIOS)
    # the ESP's files into its FAT, at the ESP's offset in the disk file
    offset = layout.esp.start_mib * MIB if layout.esp else None
    assert any(f"mcopy -s -o -i {tmp_path / 'disk.raw'}@@{offset} " in ln for ln in lines) == efi
    assert lines[-1] == f"umount {tmp_path / 'root'}/sys {tmp_path / 'root'}/proc {tmp_path / 'root'}/dev " \
                        f"{tmp_path / 'root'}"
    # update-grub after every grub-install, in the chroot
    assert [ln.split()[2] for ln in lines if ln.startswith("chroot ")][-1] == "update-grub"


def test_loop_disk_registers_the_partitions_and_detaches(tmp_path):
    disk = tmp_path / "hybrid.raw"
    (tmp_path / "tree").mkdir()
    make_layout_disk(disk, tmp_path / "tree", Firmware.HYBRID, size_mib=160)
    with hostgrub.loop_disk(disk, Reporter()) as loop:
        assert loops_backed_by(disk) == [loop.device]
        assert sorted(loop.numbers) == [1, 14, 15]
        sizes = {n: int(Path(f"/sys/dev/block/{mj}:{mn}/size").read_text()) for n, (mj, mn) in loop.numbers.items()}
        assert sizes[14] == 3 * 2048 and sizes[15] == 124 * 2048   # sectors, as disklayout places them
    assert loops_backed_by(disk) == []


def test_a_failed_grub_names_it_and_leaves_no_loop_device(tmp_path):
    tree = tmp_path / "tree"
    for d in ("dev", "proc", "sys", "boot"):
        (tree / d).mkdir(parents=True)
    disk = tmp_path / "nogrub.raw"
    make_disk(disk, tree)
    with pytest.raises(InstallFailed, match=r"grub on the host failed \(exit \d+\)") as err:
        hostgrub.run_grub(disk, layout_for(Firmware.BIOS), tmp_path, Reporter())
    assert "grub-install" in str(err.value)
    assert loops_backed_by(disk) == []
    # the namespace took its mounts with it
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def test_detach_stale_takes_only_dead_builds_devices(tmp_path):
    dead, alive = tmp_path / "work" / "dead-build", tmp_path / "work" / "live-build"
    devices = {}
    for d in (dead, alive):
        d.mkdir(parents=True)
        with open(d / "disk.raw", "wb") as f:
            f.truncate(8 << 20)
        devices[d] = subprocess.run(["losetup", "--find", "--show", str(d / "disk.raw")], check=True,
                                    capture_output=True, text=True).stdout.strip()
    try:
        assert hostgrub.detach_stale(tmp_path / "work", {alive}, Reporter()) == [devices[dead]]
        assert loops_backed_by(dead) == [] and loops_backed_by(alive) == [devices[alive]]
    finally:
        for dev in devices.values():
            subprocess.run(["losetup", "--detach", dev], capture_output=True)


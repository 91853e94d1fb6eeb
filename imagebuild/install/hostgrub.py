"""The boot loader written on the host: the image's own ``grub-install`` and ``update-grub``, run in a
chroot of its root filesystem, mounted through a loop device in a private mount namespace.

Under emulation the libguestfs appliance takes 14-26 s for them (``update-grub`` alone makes a dozen
``grub-probe`` calls of ~1.5 s each there); natively the same programs take about a second.
diskimage-builder and debian-cloud-images (FAI) run grub the same way, on a loop device.

What grub reads is what it reads in a guest or the appliance, with nothing of the host's in it:

- a ``/dev`` of its own (tmpfs, private to the namespace): the disk is ``/dev/sda`` and partition N
  ``/dev/sdaN`` (grub names the BIOS drive ``hd0`` after it, the name the appliance's kernel gives it
  too), ``/dev/disk/by-uuid`` links the filesystems (update-grub writes ``root=UUID=`` only where the
  link exists), and the few character devices programs expect. The host's ``/dev`` is never seen.
- ``/proc`` and ``/sys`` (grub reads a partition's start from sysfs).
- the ESP, which this host cannot mount (no vfat driver): ``grub-install --target=x86_64-efi`` writes
  its files into a tmpfs mounted at ``/boot/efi`` under the ESP's device name (grub checks that the
  device there holds FAT, which it does), and ``mcopy`` copies them into the FAT (userspace, as
  ``mkfs.fat`` made it).

The namespace ends with the command: whatever it mounted goes with it, even on SIGKILL. The loop
device is detached on every exit path, and ``invoke clean`` detaches one a killed build left
(``detach_stale``). Only a raw disk can go through a loop device; a qcow2 disk (an overlay over a
cached install) has grub run in the appliance instead.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..disklayout import ESP_MOUNT, MIB, DiskLayout
from ..errors import InstallFailed
from ..events import Reporter
from ..recipe import Firmware
from ..run import run

GUEST_DISK = "/dev/sda"
# character devices a chroot's programs expect (name, major, minor), as devtmpfs makes them
CHAR_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9))


def tools(layout: DiskLayout) -> dict[str, str]:
    """The host tools grub on the host needs for ``layout`` (checked before a build starts)."""
    need = {"losetup": "attach the disk to run grub on the host (util-linux)",
            "partx": "register the disk's partitions on the loop device (util-linux)"}
    if layout.esp is not None:
        need["mcopy"] = "copy grub's EFI files into the ESP (Debian package mtools)"
    return need


@dataclass(frozen=True)
class LoopDisk:
    device: str                                  # /dev/loopN
    numbers: dict[int, tuple[int, int]]          # partition number → (major, minor)

    @property
    def majmin(self) -> tuple[int, int]:
        st = os.stat(self.device)
        return os.major(st.st_rdev), os.minor(st.st_rdev)


def _partitions(device: str) -> dict[int, tuple[int, int]]:
    """partition number → (major, minor), read from sysfs (``/dev`` nodes may lag or be stale)."""
    name = device.removeprefix("/dev/")
    found = {}
    for part in Path(f"/sys/block/{name}").glob(f"{name}p*"):
        major, minor = (part / "dev").read_text().split(":")
        found[int((part / "partition").read_text())] = (int(major), int(minor))
    return found


@contextmanager
def loop_disk(disk: Path, reporter: Reporter) -> Iterator[LoopDisk]:
    """``disk`` (raw) on a free loop device with its partitions registered (this kernel does not scan
    a loop device's table itself); detached again, partitions first, on every exit."""
    device = run(["losetup", "--find", "--show", str(disk)], reporter=reporter,
                 purpose="attach the disk for grub").stdout.strip()
    try:
        # a device whose last user detached it without removing its partitions still has them (partx
        # --update would do both, but skips numbers past the count of partitions: 14 and 15 here)
        run(["partx", "--delete", device], reporter=reporter, check=False, log_output=False,
            purpose="drop stale partitions, if any")
        run(["partx", "--add", device], reporter=reporter, purpose="register the disk's partitions")
        yield LoopDisk(device, _partitions(device))
    finally:
        detach(device, reporter)


def detach(device: str, reporter: Reporter) -> None:
    run(["partx", "--delete", device], reporter=reporter, check=False, purpose="remove the partitions")
    run(["losetup", "--detach", device], reporter=reporter, check=False, purpose="detach the disk")


def detach_stale(under: Path, alive: set[Path], reporter: Reporter) -> list[str]:
    """Detach every loop device whose backing file lies under ``under`` but in none of ``alive``
    (a killed build's); returns the devices."""
    out = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], reporter=reporter,
              check=False, purpose="find loop devices left by killed builds").stdout
    try:
        devices = json.loads(out or "{}").get("loopdevices", [])
    except json.JSONDecodeError:
        return []
    stale = []
    for d in devices:
        back = Path((d.get("back-file") or "").removesuffix(" (deleted)"))
        if back.is_relative_to(under) and not any(back.is_relative_to(a) for a in alive):
            detach(d["name"], reporter)
            stale.append(d["name"])
    return stale


def grub_installs(layout: DiskLayout, disk: str) -> list[list[str]]:
    """The grub-install commands a layout needs (run in the image: its grub, its shim)."""
    installs = []
    if layout.firmware in (Firmware.BIOS, Firmware.HYBRID):
        installs.append(["grub-install", "--target=i386-pc", disk])
    if layout.esp is not None:
        # --uefi-secure-boot installs shim (signed by Microsoft's UEFI CA) in front of Debian's
        # signed grub; --force-extra-removable puts the same chain at EFI/BOOT/BOOTX64.EFI, which a
        # fresh NVRAM (every new cloud guest) boots; --no-nvram: the build's NVRAM is not the guest's.
        installs.append(["grub-install", "--target=x86_64-efi", f"--efi-directory={ESP_MOUNT}",
                         "--bootloader-id=debian", "--no-nvram", "--uefi-secure-boot",
                         "--force-extra-removable"])
    return installs


def script(layout: DiskLayout, disk: Path, loop: LoopDisk, mountpoint: Path) -> str:
    """The shell script run in a private mount namespace: the image's /dev, its root mounted, the grub
    commands in a chroot, the ESP's files copied into the FAT."""
    q = shlex.quote
    mnt = q(str(mountpoint))

    def dev(number: int) -> str:
        return f"{GUEST_DISK}{number}"

    lines = ["set -eu",
             "mount -t tmpfs -o mode=0755,size=1m imagebuild-dev /dev",
             "mknod -m 0600 {} b {} {}".format(GUEST_DISK, *loop.majmin)]
    lines += [f"mknod -m 0600 {dev(n)} b {major} {minor}" for n, (major, minor) in sorted(loop.numbers.items())]
    lines += [f"mknod -m 0666 /dev/{name} c {major} {minor}" for name, major, minor in CHAR_DEVICES]
    root = dev(layout.root.number)
    lines += ["mkdir -p /dev/disk/by-uuid",
              f'ln -s ../../{root.removeprefix("/dev/")} "/dev/disk/by-uuid/$(blkid -o value -s UUID {root})"']
    lines += [f"mount -t ext4 {root} {mnt}",
              f"mount --bind /dev {mnt}/dev", f"mount -t proc proc {mnt}/proc", f"mount -t sysfs sysfs {mnt}/sys"]
    esp = layout.esp
    if esp is not None:
        # grub-install checks that the device under --efi-directory holds FAT; its files land in the
        # tmpfs and go into the FAT with mcopy below
        lines.append(f"mkdir -p {mnt}{ESP_MOUNT} && mount -t tmpfs -o mode=0700 {dev(esp.number)} {mnt}{ESP_MOUNT}")
    lines += [f"chroot {mnt} {shlex.join(argv)}" for argv in grub_installs(layout, GUEST_DISK)]
    lines.append(f"chroot {mnt} update-grub")
    if esp is not None:
        # into the disk file itself, at the ESP's offset (mtools asks a block device for a geometry a
        # loop partition does not have); the appliance reads the file next
        lines.append(f"MTOOLS_SKIP_CHECK=1 mcopy -s -o -i {q(str(disk))}@@{esp.start_mib * MIB} "
                     f"{mnt}{ESP_MOUNT}/* ::/")
        lines.append(f"umount {mnt}{ESP_MOUNT}")
    lines += [f"umount {mnt}/sys {mnt}/proc {mnt}/dev {mnt}"]
    return "\n".join(lines) + "\n"


def run_grub(disk: Path, layout: DiskLayout, work: Path, reporter: Reporter) -> None:
    """grub-install (each target the layout boots) and update-grub of the image in ``disk`` (raw), on
    the host."""
    mountpoint = work / "grub-root"
    mountpoint.mkdir(exist_ok=True)
    with loop_disk(disk, reporter) as loop:
        missing = [p.number for p in layout.partitions if p.number not in loop.numbers]
        if missing:
            raise InstallFailed(f"the loop device {loop.device} shows no partition {missing} of {disk}: "
                                f"its table does not match the {layout.firmware} layout")
        res = run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   script(layout, disk, loop, mountpoint)],
                  reporter=reporter, check=False,
                  purpose="the image's grub-install and update-grub, in a chroot of its root filesystem")
    if res.returncode != 0:
        raise InstallFailed(f"grub on the host failed (exit {res.returncode}):\n"
                            f"{(res.stdout + res.stderr)[-3000:]}")

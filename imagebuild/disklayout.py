"""Disk layouts per firmware: which partitions a golden image has, where, and of what type. ``Firmware``
names the layouts (a recipe's ``image.firmware``) and ``BOOT_PACKAGES`` gives each its boot loaders.

One table serves everything that needs to know it: the bootstrap installer writes it with ``sfdisk``,
the customize session and the post-check accept exactly these partitions (and refuse a second Linux
filesystem, swap or LVM), ``invoke show`` prints it, and the boot test checks the guest sees it.

- ``bios``: MBR, partition 1 at 1 MiB holding ext4 ``/`` (the classic layout, unchanged).
- ``uefi``: GPT, partition 15 an EFI system partition (vfat, ``/boot/efi``), partition 1 ``/``.
- ``hybrid``: GPT, partition 14 a BIOS boot partition (no filesystem: grub's i386-pc core image lives
  there), partition 15 the ESP, partition 1 ``/``. This is the shape of Debian's and Ubuntu's own
  cloud images (debian-cloud-images, ``partition.AMD64``): numbers 14 and 15 keep ``/`` as partition 1
  and at the end of the disk, so a cloud's growpart can extend it in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Firmware(StrEnum):
    """What the disk is laid out to boot from (its partition table and boot loaders). Part of the recipe's
    model (``recipe.Firmware``), defined here with the layouts so that the model's rules can use them."""
    BIOS = "bios"      # MBR, one ext4 /, grub for i386-pc
    UEFI = "uefi"      # GPT, an EFI system partition and one ext4 /, grub (and shim) for x86_64-efi
    HYBRID = "hybrid"  # GPT, a BIOS boot partition, an ESP and one ext4 /, grub for both


MIB = 1024 * 1024
SECTOR = 512
ROOT_PARTNO = 1
ESP_PARTNO = 15
BIOS_BOOT_PARTNO = 14
ESP_MOUNT = "/boot/efi"
ESP_LABEL = "ESP"


class Role(StrEnum):
    ROOT = "root"
    ESP = "esp"
    BIOS_BOOT = "bios-boot"


# GPT partition type GUIDs (UEFI spec; the root type is the Discoverable Partitions one for x86-64).
GPT_TYPE = {
    Role.ROOT: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    Role.ESP: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    Role.BIOS_BOOT: "21686148-6449-6E6F-744E-656564454649",
}
MBR_LINUX = "83"


@dataclass(frozen=True)
class Partition:
    number: int
    role: Role
    start_mib: int
    size_mib: int | None = None        # None: to the end of the disk

    @property
    def start_sector(self) -> int:
        return self.start_mib * MIB // SECTOR


@dataclass(frozen=True)
class DiskLayout:
    firmware: Firmware
    label: str                          # "dos" or "gpt"
    partitions: tuple[Partition, ...]   # in disk order

    def part(self, role: Role) -> Partition | None:
        return next((p for p in self.partitions if p.role is role), None)

    @property
    def root(self) -> Partition:
        p = self.part(Role.ROOT)
        assert p is not None
        return p

    @property
    def esp(self) -> Partition | None:
        return self.part(Role.ESP)

    @property
    def overhead_mib(self) -> int:
        """What the layout takes from the disk besides ``/`` (GPT keeps a backup table at the end)."""
        return self.root.start_mib + (1 if self.label == "gpt" else 0)

    def sfdisk_script(self, disk_name: str, ids: Callable[[str], str] | None = None) -> str:
        """Input for ``sfdisk DISK``; partition numbers come from the ``NAMEn :`` prefixes. ``ids(purpose)``
        gives the disk's and each partition's identifier (a UUID; for a dos label its first 8 hex digits
        are the disk id), so they are derived, not random (``reproducible``)."""
        lines = [f"label: {self.label}"]
        if ids is not None:
            disk_id = ids("disk-label")
            lines.append(f"label-id: {disk_id.upper() if self.label == 'gpt' else '0x' + disk_id[:8]}")
        if self.label == "gpt":
            lines.append("first-lba: 2048")
        for p in self.partitions:
            fields = [f"start={p.start_sector}"]
            if p.size_mib is not None:
                fields.append(f"size={p.size_mib * MIB // SECTOR}")
            if self.label == "gpt":
                fields += [f"type={GPT_TYPE[p.role]}", f'name="{p.role}"']
                if ids is not None:
                    fields.append(f"uuid={ids(f'partition-{p.role}').upper()}")
            else:
                fields += [f"type={MBR_LINUX}", "bootable"]
            lines.append(f"{disk_name}{p.number} : " + ", ".join(fields))
        return "\n".join(lines) + "\n"

    def describe(self) -> dict[str, object]:
        """For ``invoke show`` and the manifest."""
        mounts = {Role.ROOT: "/", Role.ESP: ESP_MOUNT, Role.BIOS_BOOT: None}
        fs = {Role.ROOT: "ext4", Role.ESP: "vfat", Role.BIOS_BOOT: None}
        return {"label": self.label, "partitions": [
            {"number": p.number, "role": str(p.role), "start": f"{p.start_mib}MiB",
             "size": f"{p.size_mib}MiB" if p.size_mib else "rest", "fs": fs[p.role], "mount": mounts[p.role]}
            for p in self.partitions]}


LAYOUTS = {
    Firmware.BIOS: DiskLayout(Firmware.BIOS, "dos", (Partition(ROOT_PARTNO, Role.ROOT, 1),)),
    Firmware.UEFI: DiskLayout(Firmware.UEFI, "gpt", (
        Partition(ESP_PARTNO, Role.ESP, 1, 127),
        Partition(ROOT_PARTNO, Role.ROOT, 128))),
    Firmware.HYBRID: DiskLayout(Firmware.HYBRID, "gpt", (
        Partition(BIOS_BOOT_PARTNO, Role.BIOS_BOOT, 1, 3),
        Partition(ESP_PARTNO, Role.ESP, 4, 124),
        Partition(ROOT_PARTNO, Role.ROOT, 128))),
}
# The Debian packages that give each layout its boot loaders: the bootstrap installer includes them, the
# preflight checks the archive has them, install/hostgrub.py runs their grub-install. Hybrid images get
# Debian's cloud meta-package, which debian-cloud-images uses: it pulls grub for i386-pc and x86_64-efi,
# the signed grub and shim, and its trigger re-installs both boot paths whenever grub is upgraded (once
# /etc/grub.d/enable_cloud exists), so a later `apt upgrade` keeps BIOS and UEFI boot in step. UEFI images
# get grub-efi-amd64 (whose postinst re-installs on upgrade, to the removable path too: see
# install/bootstrap.py's UEFI_DEBCONF) with the signed chain.
BOOT_PACKAGES = {
    Firmware.BIOS: ("grub-pc",),
    Firmware.UEFI: ("grub-efi-amd64", "grub-efi-amd64-signed", "shim-signed"),
    Firmware.HYBRID: ("grub-cloud-amd64",),
}


def layout_for(firmware: Firmware) -> DiskLayout:
    return LAYOUTS[firmware]

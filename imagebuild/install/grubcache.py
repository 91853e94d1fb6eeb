"""The boot loader's output kept in the stage cache: what ``grub-install`` and ``update-grub`` wrote,
captured after a build ran them and put back, instead of running them, when nothing they read changed.

A fresh install's raw disk has them run on the host (``hostgrub``, ~1.5 s). A rebuild whose install
came from the stage cache reads it through a qcow2 overlay, which no loop device takes, so there they
would run in the appliance: 14-26 s of the customize stage under emulation (``update-grub`` alone is
~400 forks of ``sed`` and ``grub-probe``). When its steps left grub's inputs as they were (a
customize-only change such as ``customize.disable``), they would write the same bytes again.

The key (sha256 of canonical JSON, like every stage's):

- the install key: the same installed disk, so the same grub and shim binaries and the same layout;
- the code that runs grub (``install/bootstrap.py``, this module, ``disklayout.py``) and the firmware;
- what the two read of the image after the steps, through libguestfs' file calls (no command in the
  appliance): the sha256 and mode of ``/etc/default/grub``, ``/etc/default/grub.d/*``,
  ``/etc/grub.d/*`` (update-grub runs the executable ones) and ``/etc/os-release``; the path and size
  of every file under ``/boot`` (the kernels and initramfs images update-grub lists, and whatever
  ``/boot/grub`` and the ESP held); the grub and shim packages in dpkg's status file (version and
  status); and each filesystem's UUID (grub.cfg and the core image find ``/`` by it).

A miss names what changed (``image.files./etc/default/grub.d/60-hotplug.cfg changed``).

Stored: ``grub.tar`` (``/boot/grub`` after both ran), ``esp.tar`` (the ESP's files, where the layout
has one) and ``bootcode.bin`` (for BIOS boot: the MBR's first 440 bytes, then the MBR gap or the BIOS
boot partition, where grub-install embeds its core image). Put back: ``/boot/grub`` and the ESP emptied
and untarred, the boot code written at its offsets. The checks that follow a run follow a restore
too, and the post-check and the boot test judge the result exactly as they judge a fresh one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..disklayout import ESP_MOUNT, MIB, SECTOR, DiskLayout, Role
from ..errors import InstallFailed
from ..guest import Guest
from ..recipe import Firmware

STAGE = "boot-loader"
GRUB_TAR, ESP_TAR, BOOT_CODE = "grub.tar", "esp.tar", "bootcode.bin"
CODE = ("install/bootstrap.py", "install/grubcache.py", "install/hostgrub.py", "disklayout.py")
MBR_BOOT_CODE = 440  # bytes of boot code before the disk signature and the partition table

# What grub reads, read through the file API (a few ms a call) rather than one shell command in the
# image (~1 s under emulation: the chroot's mounts and a fork per tool).
CONFIG_FILES = ("/etc/default/grub", "/etc/default/grub.d/*", "/etc/grub.d/*", "/etc/os-release")
PACKAGES = ("grub*", "shim*")
DPKG_STATUS = "/var/lib/dpkg/status"


def boot_code_regions(layout: DiskLayout) -> list[tuple[int, int]]:
    """(offset, length) of the disk areas grub-install writes for BIOS boot: the MBR's code, then the
    gap before the first partition (MBR) or the BIOS boot partition (GPT). None for UEFI-only."""
    if layout.firmware not in (Firmware.BIOS, Firmware.HYBRID):
        return []
    regions = [(0, MBR_BOOT_CODE)]
    bios_boot = layout.part(Role.BIOS_BOOT)
    if bios_boot is not None:
        assert bios_boot.size_mib is not None
        regions.append((bios_boot.start_mib * MIB, bios_boot.size_mib * MIB))
    else:
        first = min(p.start_mib for p in layout.partitions)
        regions.append((SECTOR, first * MIB - SECTOR))
    return regions


def read_inputs(guest: Guest) -> dict[str, Any]:
    """What grub-install and update-grub read of the image, as the key's ``image`` part: each
    configuration file's mode (symlinks followed) and sha256, each regular file under ``/boot`` with
    its size, and the grub and shim packages dpkg holds (version and status)."""
    files: dict[str, str] = {}
    for pattern in CONFIG_FILES:
        for path in guest.glob(pattern) if "*" in pattern else [pattern]:
            mode = guest.stat_mode(path)
            if mode is None:
                continue
            digest = hashlib.sha256(guest.read_bytes(path)).hexdigest() if stat.S_ISREG(mode) else "?"
            files[path] = f"{stat.S_IMODE(mode):o} {digest}"  # one string per file: "...grub changed"
    boot = {path: guest.filesize(path) for path in guest.find_files("/boot")}
    packages: dict[str, str] = {}
    if guest.stat_mode(DPKG_STATUS) is not None:
        for stanza in guest.read(DPKG_STATUS).split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.M))
            name, status = fields.get("Package", ""), fields.get("Status", "")
            if any(fnmatch.fnmatch(name, p) for p in PACKAGES) and not status.endswith(" not-installed"):
                packages[name] = f"{fields.get('Version', '')} {status}"
    return {"files": dict(sorted(files.items())), "boot": dict(sorted(boot.items())),
            "packages": dict(sorted(packages.items()))}


def key_inputs(guest: Guest, layout: DiskLayout, *, install_key: str, code: str) -> dict[str, Any]:
    uuids = {"root": guest.call("vfs_uuid", guest.root_device)}
    if guest.esp_device:
        uuids["esp"] = guest.call("vfs_uuid", guest.esp_device)
    return {"stage": STAGE, "install": install_key, "firmware": str(layout.firmware), "code": code,
            "uuids": uuids, "image": read_inputs(guest)}


def capture(guest: Guest, layout: DiskLayout) -> tuple[dict[str, Callable[[Path], None]], dict[str, Any]]:
    """The entry's file writers and its extra meta, read from the image after grub ran."""
    disk = guest.devices()[0]
    regions = boot_code_regions(layout)

    def grub_tar(dest: Path) -> None:
        guest.call("tar_out", "/boot/grub", str(dest), numericowner=True)

    def esp_tar(dest: Path) -> None:
        guest.call("tar_out", ESP_MOUNT, str(dest), numericowner=True)

    def boot_code(dest: Path) -> None:
        with open(dest, "wb") as out, tempfile.TemporaryDirectory(prefix="imagebuild-bootcode-") as tmp:
            part = Path(tmp) / "region"
            for offset, length in regions:
                guest.call("download_offset", disk, str(part), offset, length)
                data = part.read_bytes()
                if len(data) != length:
                    raise OSError(f"read {len(data)} of {length} bytes of boot code at {offset}")
                out.write(data)

    files: dict[str, Callable[[Path], None]] = {GRUB_TAR: grub_tar}
    if guest.esp_device:
        files[ESP_TAR] = esp_tar
    if regions:
        files[BOOT_CODE] = boot_code
    return files, {"boot_code_regions": [list(r) for r in regions]}


def restore(guest: Guest, layout: DiskLayout, entry_file: Callable[[str], Path], meta: dict[str, Any]) -> None:
    """Put an entry's output back: what grub-install and update-grub would have written."""
    regions = [tuple(r) for r in meta.get("boot_code_regions", [])]
    if regions != boot_code_regions(layout):
        raise InstallFailed(f"the boot loader's cache entry has boot code regions {regions}, not this layout's")
    guest.call("rm_rf", "/boot/grub")
    guest.call("mkdir_p", "/boot/grub")
    guest.call("tar_in", str(entry_file(GRUB_TAR)), "/boot/grub")
    if guest.esp_device:
        for name in guest.ls(ESP_MOUNT):
            guest.call("rm_rf", f"{ESP_MOUNT}/{name}")
        guest.call("tar_in", str(entry_file(ESP_TAR)), ESP_MOUNT)
    if regions:
        disk = guest.devices()[0]
        data = entry_file(BOOT_CODE).read_bytes()
        if len(data) != sum(length for _, length in regions):
            raise InstallFailed(f"the boot loader's cache entry: {BOOT_CODE} holds {len(data)} bytes, "
                                f"its regions {regions}")
        with tempfile.TemporaryDirectory(prefix="imagebuild-bootcode-") as tmp:
            part, pos = Path(tmp) / "region", 0
            for offset, length in regions:
                part.write_bytes(data[pos:pos + length])
                guest.call("upload_offset", str(part), disk, offset)
                pos += length

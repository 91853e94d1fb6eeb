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
- what the two read of the image after the steps, in one command in the appliance: the sha256 and
  mode of ``/etc/default/grub``, ``/etc/default/grub.d/*``, ``/etc/grub.d/*`` (update-grub runs the
  executable ones) and ``/etc/os-release``; the path and size of every file under ``/boot`` (the
  kernels and initramfs images update-grub lists, and whatever ``/boot/grub`` and the ESP held); the
  installed grub and shim packages' versions; and each filesystem's UUID (grub.cfg and the core image
  find ``/`` by it).

A miss names what changed (``image.files./etc/default/grub.d/60-hotplug.cfg changed``).

Stored: ``grub.tar`` (``/boot/grub`` after both ran), ``esp.tar`` (the ESP's files, where the layout
has one) and ``bootcode.bin`` (for BIOS boot: the MBR's first 440 bytes, then the MBR gap or the BIOS
boot partition, where grub-install embeds its core image). Put back: ``/boot/grub`` and the ESP emptied
and untarred, the boot code written at its offsets. The checks that follow a run follow a restore
too, and the post-check and the boot test judge the result exactly as they judge a fresh one.
"""

from __future__ import annotations

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

# One command: each fork costs tens of milliseconds under emulation, so no loop forks per file.
_INPUTS_SCRIPT = r"""
files=$(ls -d /etc/default/grub /etc/default/grub.d/* /etc/grub.d/* /etc/os-release 2>/dev/null)
[ -n "$files" ] && sha256sum $files | sed 's/^/sha256 /'
[ -n "$files" ] && stat -L -c 'mode %a %n' $files
find /boot -type f -printf 'boot %s %p\n'
dpkg-query -W -f='package ${Package} ${Version} ${db:Status-Abbrev}\n' 'grub*' 'shim*' 2>/dev/null
true
"""


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
    """What grub-install and update-grub read of the image, as the key's ``image`` part."""
    out = guest.command(["sh", "-c", _INPUTS_SCRIPT], purpose="what grub reads, for the boot loader's cache key")
    files: dict[str, dict[str, str]] = {}
    boot: dict[str, int] = {}
    packages: dict[str, str] = {}
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "sha256":
            digest, _, path = rest.partition("  ")
            files.setdefault(path.strip(), {})["sha256"] = digest
        elif kind == "mode":
            mode, _, path = rest.partition(" ")
            files.setdefault(path.strip(), {})["mode"] = mode
        elif kind == "boot":
            size, _, path = rest.partition(" ")
            boot[path] = int(size)
        elif kind == "package":
            name, _, version = rest.partition(" ")
            packages[name] = version
    # one string per file, so a miss reads "image.files./etc/default/grub changed"
    return {"files": {p: f"{v.get('mode', '?')} {v.get('sha256', '?')}" for p, v in sorted(files.items())},
            "boot": dict(sorted(boot.items())), "packages": dict(sorted(packages.items()))}


def key_inputs(guest: Guest, layout: DiskLayout, *, install_key: str, code: str) -> dict[str, Any]:
    uuids = {"root": guest.call("vfs_uuid", guest.root_device)}
    if guest.esp_device:
        uuids["esp"] = guest.call("vfs_uuid", guest.esp_device)
    return {"stage": STAGE, "install": install_key, "firmware": str(layout.firmware), "code": code,
            "uuids": uuids, "image": read_inputs(guest)}


def capture(guest: Guest, layout: DiskLayout) -> tuple[dict[str, Callable[[Path], None]], dict[str, Any]]:
    """The entry's file writers and its extra meta, read from the image after grub ran."""
    disk = guest.g.list_devices()[0]
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
        disk = guest.g.list_devices()[0]
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

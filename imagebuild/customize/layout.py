"""The golden layout: one Linux filesystem mounted at /, no swap (partition, file or fstab entry), no
LVM; beside it only the boot partitions the image's firmware needs (an ESP at /boot/efi for uefi and
hybrid images, a BIOS boot partition without a filesystem for hybrid ones: ``disklayout``).

Partitions cannot be fixed after the fact, so ``Guest.mount_root`` refuses such a disk outright; swap
files, swap lines and resume= settings can, and this step removes them.
"""

from __future__ import annotations

from ..disklayout import ESP_MOUNT, layout_for
from ..guest import Guest
from .registry import StepContext, register

PSEUDO_FS = {"proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "securityfs", "cgroup", "cgroup2",
             "debugfs", "efivarfs", "none", "hugetlbfs", "mqueue", "binfmt_misc"}
RESUME_FILES = ("/etc/initramfs-tools/conf.d/resume", "/etc/uswsusp.conf")
SWAP_FILES = ("/swapfile", "/swap.img", "/swap")


def fstab_entries(text: str) -> list[tuple[int, list[str]]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            out.append((n, fields))
    return out


def _fstab_problems(guest: Guest) -> list[str]:
    if not guest.is_file("/etc/fstab"):
        return ["/etc/fstab is missing"]
    problems = []
    roots = 0
    has_esp = layout_for(guest.firmware).esp is not None
    esp_lines = 0
    for n, f in fstab_entries(guest.read("/etc/fstab")):
        if len(f) < 3:
            problems.append(f"/etc/fstab:{n}: malformed line")
        elif f[2] == "swap" or f[1] == "swap":
            problems.append(f"/etc/fstab:{n}: swap entry {' '.join(f[:3])}")
        elif f[1] == "/":
            roots += 1
        elif f[1] == ESP_MOUNT and f[2] == "vfat" and has_esp:
            esp_lines += 1
        elif f[2] not in PSEUDO_FS:
            problems.append(f"/etc/fstab:{n}: a second mount point {f[1]} ({f[2]})")
    if roots != 1:
        problems.append(f"/etc/fstab mounts / {roots} times, expected once")
    if has_esp and esp_lines != 1:
        problems.append(f"/etc/fstab mounts the EFI system partition at {ESP_MOUNT} {esp_lines} times, "
                        "expected once (grub and shim updates write there)")
    return problems


def _check(guest: Guest, ctx: StepContext) -> list[str]:
    problems = guest.partition_problems() + _fstab_problems(guest)
    problems += [f"swap file {p} exists" for p in SWAP_FILES if guest.is_file(p)]
    problems += [f"{p} exists (resume from a swap device)" for p in RESUME_FILES if guest.is_file(p)]
    return problems


@register("layout", "Enforce one filesystem at / with no swap: drop swap lines, swap files and "
          "resume settings; refuse extra partitions or LVM", order=950, check=_check)
def layout(guest: Guest, ctx: StepContext) -> None:
    if guest.is_file("/etc/fstab"):
        swap_targets = [f[0] for _, f in fstab_entries(guest.read("/etc/fstab"))
                        if len(f) >= 3 and (f[2] == "swap" or f[1] == "swap")]
        guest.edit_lines("/etc/fstab", lambda line: not (
            line.split()[:1] and not line.lstrip().startswith("#") and len(line.split()) >= 3
            and (line.split()[2] == "swap" or line.split()[1] == "swap")))
        for target in swap_targets:
            if target.startswith("/") and guest.is_file(target):
                guest.remove(target)
    for p in SWAP_FILES + RESUME_FILES:
        if guest.is_file(p):
            guest.remove(p)

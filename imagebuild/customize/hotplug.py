"""Hotplug readiness: vCPUs and memory that an operator hot-adds to a running guest come online by
themselves, and the drivers a cloud's disk and virtio network need are in the initramfs.

Linux leaves hot-added CPUs and memory blocks offline unless something onlines them; Debian ships no
rule for it (SUSE and RHEL ship udev rules). What the image carries, per family:

- vCPUs, both families: a udev rule that onlines a CPU on its ``add`` event. The kernel has no knob for
  CPUs, and a CPU add event does not need memory, so udev is safe here.
- memory, Debian: the kernel's own ``memhp_default_state=online`` with
  ``memory_hotplug.online_policy=auto-movable`` on the kernel command line (kernel >= 5.15: Debian 12
  and 13). The kernel onlines each block while adding it, so it works when udev itself stalls under the
  memory pressure that made the operator add memory; ``auto-movable`` puts blocks in ZONE_MOVABLE (so
  they can be unplugged again) as long as the movable:normal ratio stays safe, and in ZONE_NORMAL
  beyond it, instead of ``online_movable`` for everything, which can starve the kernel of unmovable
  memory when a small guest gets a large DIMM.
- memory, EL: a udev rule onlining blocks as ``online_movable`` (what RHEL's own rule does in VMs);
  the EL7 kernel predates the auto-movable policy.
- initramfs: Debian's (a bootstrap build's policy, ``install/initramfs.py``, or debian-installer's
  ``MODULES=most``) holds virtio_blk, virtio_scsi and virtio_net and the other clouds' disk drivers
  (``CLOUD_DISK_DRIVERS``), which the check verifies; the EL templates add the virtio ones with dracut
  (``kickstart/el7-base.ks.j2``). virtio_balloon
  is not needed before the root filesystem is mounted; udev loads it from there, and the boot test sees
  it bound.
"""

from __future__ import annotations

import posixpath
import re
import tempfile
from pathlib import Path

from ..guest import Guest
from ..initramfs_files import UnreadableInitramfs, initramfs_names
from ..recipe import Family
from .registry import StepContext, register

RULES = "/etc/udev/rules.d/80-imagebuild-hotplug.rules"
CPU_RULE = 'SUBSYSTEM=="cpu", ACTION=="add", TEST=="online", ATTR{online}=="0", ATTR{online}="1"\n'
MEMORY_RULE = ('SUBSYSTEM=="memory", ACTION=="add", TEST=="state", ATTR{state}=="offline", '
               'ATTR{state}="online_movable"\n')
HEADER = "# Installed by imagebuild: hot-added vCPUs (and, where the kernel does not, memory) come online.\n"
GRUB_SNIPPET = "/etc/default/grub.d/60-imagebuild-hotplug.cfg"
MEMORY_ARGS = "memhp_default_state=online memory_hotplug.online_policy=auto-movable"
INITRAMFS_DRIVERS = ("virtio_blk", "virtio_scsi", "virtio_net")
# Debian's initramfs (any bootstrap policy, install/initramfs.py, or debian-installer's MODULES=most)
# also holds the drivers of the disks other clouds and hypervisors give a guest: NVMe (AWS Nitro, GCP),
# AHCI and PIIX (SATA/IDE), Xen (AWS's older types), Hyper-V (Azure), VMware's PVSCSI and LSI Logic
# SPI, and ext4 for the root itself.
CLOUD_DISK_DRIVERS = ("nvme", "ahci", "ata_piix", "sd_mod", "xen-blkfront", "hv_storvsc", "vmw_pvscsi",
                      "mptspi", "ext4")


def _rules(family: Family) -> str:
    return HEADER + CPU_RULE + (MEMORY_RULE if family is Family.EL else "")


def _initramfs_listing(guest: Guest, family: Family) -> tuple[dict[str, str], list[str]]:
    """initramfs image → its file list, one name per line. Debian's are read on the host (the image is
    copied out: the appliance decompresses it ~10x slower under TCG) by ``initramfs_files``, which lists
    what ``lsinitramfs`` lists without its shell loop (5-6 s for a Debian 13 initramfs); EL's with the
    image's own lsinitrd (dracut formats that a Debian host's tools may not read). Also returned: why an
    initramfs could not be read."""
    if family is Family.EL:
        return {img: guest.command(["lsinitrd", img]) for img in guest.glob("/boot/initramfs-*.img")
                if "rescue" not in img}, []
    out, unreadable = {}, []
    with tempfile.TemporaryDirectory(prefix="imagebuild-initrd-") as tmp:
        for img in guest.glob("/boot/initrd.img-*"):
            local = Path(tmp) / posixpath.basename(img)
            guest.download(img, local)
            try:
                out[img] = "\n".join(initramfs_names(local, guest.reporter)) + "\n"
            except UnreadableInitramfs as exc:
                unreadable.append(f"{img} cannot be read: {exc.reason}")
            local.unlink()
    return out, unreadable


def _check(guest: Guest, ctx: StepContext) -> list[str]:
    family = ctx.recipe.image.family
    problems = []
    if not guest.is_file(RULES) or guest.read(RULES) != _rules(family):
        problems.append(f"{RULES} is missing or changed: hot-added vCPUs would stay offline")
    if family is Family.DEBIAN:
        cfg = guest.read("/boot/grub/grub.cfg") if guest.is_file("/boot/grub/grub.cfg") else ""
        linux = [ln for ln in cfg.splitlines() if re.match(r"\s*linux\s", ln)]
        if not linux or not all(MEMORY_ARGS in ln for ln in linux):
            problems.append(f"grub.cfg boots a kernel without '{MEMORY_ARGS}': hot-added memory would stay "
                            "offline")
    listings, unreadable = _initramfs_listing(guest, family)
    problems += unreadable
    if not listings and not unreadable:
        problems.append("no initramfs in /boot")
    drivers = INITRAMFS_DRIVERS + (CLOUD_DISK_DRIVERS if family is Family.DEBIAN else ())
    for img, files in listings.items():
        missing = [d for d in drivers if not re.search(rf"/{d}\.ko(\.[xg]z|\.zst)?$", files, re.M)]
        if missing:
            problems.append(f"{img} lacks {', '.join(missing)}: a cloud's disk or virtio NIC may not be found "
                            "at boot")
    return problems


@register("hotplug", "Hot-added vCPUs and memory come online by themselves (udev; kernel onlining on "
          "Debian); clouds' disk drivers in the initramfs", order=300, check=_check)
def hotplug(guest: Guest, ctx: StepContext) -> None:
    family = ctx.recipe.image.family
    guest.write(RULES, _rules(family), mode=0o644)
    if family is Family.DEBIAN:
        guest.write(GRUB_SNIPPET, "# Installed by imagebuild: the kernel onlines hot-added memory itself "
                    "(customize step hotplug).\n"
                    f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {MEMORY_ARGS}"\n', mode=0o644)
        # grub.cfg is regenerated once, after all steps (the installer's boot_config)

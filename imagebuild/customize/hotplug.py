"""Hotplug readiness: vCPUs and memory that an operator hot-adds to a running guest come online by
themselves, and the virtio drivers a cloud's disk and network need are in the initramfs.

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
- initramfs: Debian's (``MODULES=most``) already holds virtio_blk, virtio_scsi and virtio_net, which the
  check verifies; the EL templates add them with dracut (``kickstart/el7-base.ks.j2``). virtio_balloon
  is not needed before the root filesystem is mounted; udev loads it from there, and the boot test sees
  it bound.
"""

from __future__ import annotations

import re

from ..guest import Guest
from ..recipe import Family
from . import StepContext, register

RULES = "/etc/udev/rules.d/80-imagebuild-hotplug.rules"
CPU_RULE = 'SUBSYSTEM=="cpu", ACTION=="add", TEST=="online", ATTR{online}=="0", ATTR{online}="1"\n'
MEMORY_RULE = ('SUBSYSTEM=="memory", ACTION=="add", TEST=="state", ATTR{state}=="offline", '
               'ATTR{state}="online_movable"\n')
HEADER = "# Installed by imagebuild: hot-added vCPUs (and, where the kernel does not, memory) come online.\n"
GRUB_SNIPPET = "/etc/default/grub.d/60-imagebuild-hotplug.cfg"
MEMORY_ARGS = "memhp_default_state=online memory_hotplug.online_policy=auto-movable"
INITRAMFS_DRIVERS = ("virtio_blk", "virtio_scsi", "virtio_net")


def _rules(family: Family) -> str:
    return HEADER + CPU_RULE + (MEMORY_RULE if family is Family.EL else "")


def _initramfs_listing(guest: Guest, family: Family) -> dict[str, str]:
    """initramfs image → its file list (lsinitramfs on Debian, lsinitrd on EL)."""
    tool = "lsinitramfs" if family is Family.DEBIAN else "lsinitrd"
    images = guest.glob("/boot/initrd.img-*") if family is Family.DEBIAN else guest.glob("/boot/initramfs-*.img")
    return {img: guest.command([tool, img]) for img in images if "rescue" not in img}


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
    listings = _initramfs_listing(guest, family)
    if not listings:
        problems.append("no initramfs in /boot")
    for img, files in listings.items():
        missing = [d for d in INITRAMFS_DRIVERS if not re.search(rf"/{d}\.ko(\.[xg]z|\.zst)?$", files, re.M)]
        if missing:
            problems.append(f"{img} lacks {', '.join(missing)}: a cloud's virtio disk or NIC may not be found "
                            "at boot")
    return problems


@register("hotplug", "Hot-added vCPUs and memory come online by themselves (udev; kernel onlining on "
          "Debian); virtio drivers in the initramfs", order=300, check=_check)
def hotplug(guest: Guest, ctx: StepContext) -> None:
    family = ctx.recipe.image.family
    guest.write(RULES, _rules(family), mode=0o644)
    if family is Family.DEBIAN:
        guest.write(GRUB_SNIPPET, "# Installed by imagebuild: the kernel onlines hot-added memory itself "
                    "(customize step hotplug).\n"
                    f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {MEMORY_ARGS}"\n', mode=0o644)
        guest.command(["update-grub"], purpose="boot with memory hotplug onlining on")

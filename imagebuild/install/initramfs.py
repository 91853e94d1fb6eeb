"""What a bootstrap image's initramfs holds (``install.bootstrap.initramfs_modules``), and why.

Debian's initramfs-tools defaults to ``MODULES=most``: every storage, filesystem, keyboard and bus driver,
and every network driver too, so that a root on NFS or iSCSI can be reached through whatever NIC the
machine has. For Debian 12's kernel that is 747 modules, 128 MB unpacked, a third of it (41 MB) physical
NIC drivers (``kernel/drivers/net``). A golden image's root is on a local disk, and the initramfs is read
at every boot: the boot loader loads it through the firmware, and the kernel unpacks it.

- ``disk`` (the default): initramfs-tools' own ``most`` categories except ``net`` (``CATEGORIES``: the
  block, SCSI, ATA, IDE, NVMe, MMC and USB storage drivers, every filesystem, keyboards and buses), plus
  the paravirtual NICs of the clouds and hypervisors (``CLOUD_NICS``; issue 8 wants virtio_net at early
  boot). A physical NIC driver that a storage driver needs (iSCSI offload: cxgb4, qed, cnic) still comes
  in as that driver's dependency. Measured on debian12 (docs/speed.md): 509 modules instead of 747,
  21 MB compressed instead of 30 (88 MB unpacked instead of 128), update-initramfs 16 s instead of 22
  in the install, and a boot 7-11 s shorter under emulation.
- ``most``: Debian's default, for an image whose root is on the network or that unlocks its disk over a
  physical NIC before the root is mounted.

The choice is carried by the image itself: ``CONF`` sets ``MODULES=list`` and the hook ``HOOK`` adds the
set, so an initramfs made again in the guest (a kernel upgrade) holds the same drivers. An operator who
wants Debian's default removes ``CONF`` and runs ``update-initramfs -u``. The customize post-check
(``customize/hotplug.py``) requires the storage drivers of the clouds' disks in every initramfs, whatever
the policy.
"""

from __future__ import annotations

import shlex
from pathlib import Path

CONF = "/etc/initramfs-tools/conf.d/imagebuild-modules"
HOOK = "/etc/initramfs-tools/hooks/imagebuild-modules"
# initramfs-tools' categories of MODULES=most (auto_add_modules in hook-functions, the same in bookworm's
# 0.142 and trixie's 0.148) but "net"
CATEGORIES = ("base", "ide", "scsi", "block", "ata", "dasd", "firewire", "mmc", "usb_storage", "fb")
# virtio, Xen (AWS's older types), Hyper-V (Azure), VMware, AWS ENA, Google gVNIC
CLOUD_NICS = ("virtio_net", "xen-netfront", "hv_netvsc", "vmxnet3", "ena", "gve")

CONF_TEXT = """\
# Installed by imagebuild (install.bootstrap.initramfs_modules = "disk"): the modules come from the hook
# /etc/initramfs-tools/hooks/imagebuild-modules, which holds the drivers of any local disk. Remove this
# file (and run update-initramfs -u) for Debian's default, MODULES=most, which adds every NIC driver.
MODULES=list
"""

HOOK_TEXT = f"""\
#!/bin/sh
# Installed by imagebuild (install.bootstrap.initramfs_modules = "disk"): the root is on a local disk.
# initramfs-tools' own MODULES=most categories but "net" (every storage, filesystem, keyboard and bus
# driver), and of the network drivers only the clouds' paravirtual NICs.
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in
prereqs) prereqs; exit 0 ;;
esac
. /usr/share/initramfs-tools/hook-functions
# only with this image's MODULES=list: another policy chosen since then is left to do its own work
[ "$MODULES" = list ] || exit 0
auto_add_modules {' '.join(CATEGORIES)}
manual_add_modules {' '.join(CLOUD_NICS)}
# the dependencies modprobe cannot see (crc32c for ext4 and btrfs, vmd for nvme): mkinitramfs resolved
# them before the hooks ran
hidden_dep_add_modules
"""


def files(policy: str) -> dict[str, tuple[str, int]]:
    """The files that carry ``policy`` in the image: {path: (text, mode)}; none for Debian's default."""
    if policy == "most":
        return {}
    return {CONF: (CONF_TEXT, 0o644), HOOK: (HOOK_TEXT, 0o755)}


def stage(policy: str, staging: Path) -> None:
    """Write ``files(policy)`` under ``staging`` (the install's work dir), for the install hook to copy."""
    for path, (text, mode) in files(policy).items():
        dest = staging / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)


def copy_in(policy: str, staging: Path) -> str:
    """The shell (run by mmdebstrap's hook, ``$1`` the tree) that puts the staged files in, before the one
    update-initramfs; empty for Debian's default."""
    return "".join(f'mkdir -p "$1{Path(path).parent}" && cp -p {shlex.quote(str(staging / path.lstrip("/")))} '
                   f'"$1{path}" && ' for path in files(policy))

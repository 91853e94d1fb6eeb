"""What a bootstrap image's initramfs holds (``install.bootstrap.initramfs_modules``), and why.

Debian's initramfs-tools defaults to ``MODULES=most``: every storage, filesystem, keyboard and bus driver,
and every network driver too, so that a root on NFS or iSCSI can be reached through whatever NIC the
machine has. For Debian 12's kernel that is 747 modules, 128 MB unpacked, a third of it (41 MB) physical
NIC drivers (``kernel/drivers/net``). A golden image's root is on a local disk, and the initramfs is read
at every boot: the boot loader loads it through the firmware, and the kernel unpacks it.

- ``virtual`` (the default): what a virtual machine's root needs, on any hypervisor or cloud
  (``VIRTUAL_DISKS``: virtio, NVMe, AHCI and PIIX, Xen, Hyper-V, VMware's PVSCSI and LSI controllers,
  MegaRAID SAS, the LSI 53C895A QEMU and Proxmox emulate, BusLogic), ext4 for the root (the only
  filesystem a bootstrap image's root has), the clouds' paravirtual NICs (``CLOUD_NICS``) and a console's
  keyboard (``KEYBOARDS``: USB, PS/2 being built in, for the initramfs' rescue shell), each with its dependencies.
  Debian's own cloud images get there another way: their cloud kernel has little else. On debian12: 70
  modules, a 9.3 MB initramfs instead of 22.4 MB, which the kernel starts 1.3 s sooner under TCG, and
  a build 0.94x as long (docs/speed.md).
- ``disk``: initramfs-tools' own ``most`` categories except ``net`` (``CATEGORIES``: the block, SCSI,
  ATA, IDE, NVMe, MMC and USB storage drivers, every filesystem, keyboards and buses), plus the
  paravirtual NICs: 509 modules on debian12, 21 MB compressed, for an image that may also boot on
  physical machines (a root behind a Fibre Channel HBA, on XFS or Btrfs).
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
# the disk controllers hypervisors and clouds give a guest: virtio (KVM: OpenStack, oVirt, Proxmox, GCP's
# virtio-scsi), NVMe (AWS Nitro, GCP, Azure), AHCI and PIIX (q35 and i440fx, VirtualBox, Hyper-V
# generation 1), SCSI disks and CD-ROMs on any of them, Xen (AWS's older types), Hyper-V (Azure),
# VMware's PVSCSI, LSI Logic SPI and SAS, MegaRAID SAS (Proxmox, VMware), the LSI 53C895A (sym53c8xx:
# QEMU's and Proxmox's default SCSI controller), BusLogic (older VMware)
VIRTUAL_DISKS = ("virtio_blk", "virtio_scsi", "virtio_pci", "nvme", "ahci", "ata_piix", "ata_generic", "sd_mod",
                 "sr_mod", "xen-blkfront", "hv_storvsc", "vmw_pvscsi", "mptspi", "mptsas", "megaraid_sas",
                 "sym53c8xx", "BusLogic")
ROOT_FILESYSTEMS = ("ext4",)
# a console's keyboard, for the initramfs' rescue shell: USB behind any host controller (Debian's kernels
# have PS/2's atkbd built in)
KEYBOARDS = ("usbhid", "hid_generic", "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd")

CONF_TEXT = """\
# Installed by imagebuild (install.bootstrap.initramfs_modules = "{policy}"): the modules come from the hook
# /etc/initramfs-tools/hooks/imagebuild-modules, which holds {what}. Remove this
# file (and run update-initramfs -u) for Debian's default, MODULES=most, which adds every NIC driver.
MODULES=list
"""

HOOK_TEXT = """\
#!/bin/sh
# Installed by imagebuild (install.bootstrap.initramfs_modules = "{policy}"): the root is on a local disk.
# {what_hook}
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in
prereqs) prereqs; exit 0 ;;
esac
. /usr/share/initramfs-tools/hook-functions
# only with this image's MODULES=list: another policy chosen since then is left to do its own work
[ "$MODULES" = list ] || exit 0
{adds}
# the dependencies modprobe cannot see (crc32c for ext4 and btrfs, vmd for nvme): mkinitramfs resolved
# them before the hooks ran
hidden_dep_add_modules
"""

TEXTS = {
    "virtual": {"what": "the drivers of a virtual machine's\n# disk on any hypervisor",
                "what_hook": "What a virtual machine's root needs on any hypervisor or cloud: its disk "
                             "controllers, ext4,\n# the clouds' paravirtual NICs and a console's keyboard.",
                "adds": f"manual_add_modules {' '.join(VIRTUAL_DISKS)}\n"
                        f"manual_add_modules {' '.join(ROOT_FILESYSTEMS)}\n"
                        f"manual_add_modules {' '.join(CLOUD_NICS)}\n"
                        f"manual_add_modules {' '.join(KEYBOARDS)}"},
    "disk": {"what": "the drivers of any local disk",
             "what_hook": "initramfs-tools' own MODULES=most categories but \"net\" (every storage, filesystem, "
                          "keyboard and bus\n# driver), and of the network drivers only the clouds' paravirtual NICs.",
             "adds": f"auto_add_modules {' '.join(CATEGORIES)}\nmanual_add_modules {' '.join(CLOUD_NICS)}"},
}


def files(policy: str) -> dict[str, tuple[str, int]]:
    """The files that carry ``policy`` in the image: {path: (text, mode)}; none for Debian's default."""
    if policy == "most":
        return {}
    texts = TEXTS[policy]
    return {CONF: (CONF_TEXT.format(policy=policy, what=texts["what"]), 0o644),
            HOOK: (HOOK_TEXT.format(policy=policy, **texts), 0o755)}


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

"""What a recipe can say: the frozen dataclasses a recipe resolves into (``Recipe`` and its tables), the
choices (``StrEnum``s), the boot-test cell and firmware model, and the constants the rules check against.

A model imports nothing of the build: the stages import it (mkosi's ``config.py``). ``Firmware`` (the disk's
layout) is defined beside the layouts themselves, in ``disklayout.py``, and is part of this model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum

from ..disklayout import Firmware
from .convert import from_data, to_data

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# The classic golden-image set every recipe gets unless it says otherwise.
BASE_PACKAGES = ("net-tools", "lrzsz", "screen", "tree", "vim", "wget")
GLANCE_VISIBILITIES = ("private", "shared", "community", "public")
# Image attributes Glance owns or imagebuild sets from the artifact; recipes may not set them as properties.
GLANCE_RESERVED = frozenset({
    "id", "name", "status", "visibility", "protected", "os_hidden", "owner", "tags", "disk_format",
    "container_format", "min_disk", "min_ram", "size", "virtual_size", "checksum", "os_hash_algo",
    "os_hash_value", "locations", "direct_url", "created_at", "updated_at", "file", "schema", "self",
    "stores"})
# Glance properties that say how to boot the image: set only from passed boot-test cells.
PROVEN_PROPERTIES = frozenset({"hw_firmware_type", "hw_machine_type", "os_secure_boot"})


class Backend(StrEnum):
    BOOTSTRAP = "bootstrap"  # VM-less: mmdebstrap builds the tree on the host
    VM = "vm"                # unattended install (kickstart/preseed) in a guest


class Machine(StrEnum):
    PC = "pc"          # i440fx + PIIX
    Q35 = "q35"        # q35 + ICH9 (PCIe); the only chipset OVMF's Secure Boot (SMM) runs on


class BootFirmware(StrEnum):
    """The firmware a boot-test cell (and a cloud) starts the image with."""
    BIOS = "bios"                # SeaBIOS
    UEFI = "uefi"                # OVMF
    SECURE_BOOT = "secure-boot"  # OVMF with Secure Boot enforced (Microsoft keys enrolled), q35 with SMM


# What each disk layout can boot, and so the boot-test cells it claims by default.
CLAIMED_CELLS: dict[Firmware, tuple[tuple[BootFirmware, Machine], ...]] = {
    Firmware.BIOS: ((BootFirmware.BIOS, Machine.PC), (BootFirmware.BIOS, Machine.Q35)),
    Firmware.UEFI: ((BootFirmware.UEFI, Machine.Q35), (BootFirmware.SECURE_BOOT, Machine.Q35)),
    Firmware.HYBRID: ((BootFirmware.BIOS, Machine.PC), (BootFirmware.BIOS, Machine.Q35),
                      (BootFirmware.UEFI, Machine.Q35), (BootFirmware.SECURE_BOOT, Machine.Q35)),
}
# OVMF runs on i440fx too, but no cloud offers that pairing (oVirt's UEFI types are q35 only) and Secure
# Boot needs SMM, which libvirt gives only on q35: cells are limited to the pairs clouds actually use.
CELL_MACHINES: dict[BootFirmware, tuple[Machine, ...]] = {
    BootFirmware.BIOS: (Machine.PC, Machine.Q35),
    BootFirmware.UEFI: (Machine.Q35,),
    BootFirmware.SECURE_BOOT: (Machine.Q35,),
}
# The firmware a disk must carry a boot path for.
NEEDS_LAYOUT: dict[BootFirmware, tuple[Firmware, ...]] = {
    BootFirmware.BIOS: (Firmware.BIOS, Firmware.HYBRID),
    BootFirmware.UEFI: (Firmware.UEFI, Firmware.HYBRID),
    BootFirmware.SECURE_BOOT: (Firmware.UEFI, Firmware.HYBRID),
}


@dataclass(frozen=True, order=True)
class Cell:
    """One boot-test cell: a firmware on a machine type, written ``firmware/machine`` (``uefi/q35``)."""
    firmware: BootFirmware
    machine: Machine

    def __str__(self) -> str:
        return f"{self.firmware}/{self.machine}"

    @property
    def slug(self) -> str:
        """For file names: ``uefi-q35``."""
        return f"{self.firmware}-{self.machine}"

    @classmethod
    def parse(cls, text: str) -> Cell:
        """``uefi/q35`` → Cell; ValueError with the reason otherwise."""
        fw, sep, machine = text.partition("/")
        if not sep:
            raise ValueError(f"'{text}' is not firmware/machine (e.g. 'uefi/q35')")
        try:
            firmware = BootFirmware(fw)
        except ValueError:
            raise ValueError(f"unknown firmware '{fw}' in '{text}' (one of "
                             + ", ".join(f.value for f in BootFirmware) + ")") from None
        try:
            mach = Machine(machine)
        except ValueError:
            raise ValueError(f"unknown machine type '{machine}' in '{text}' (one of "
                             + ", ".join(m.value for m in Machine) + ")") from None
        if mach not in CELL_MACHINES[firmware]:
            raise ValueError(f"'{text}': {firmware} firmware is tested on "
                             + " or ".join(m.value for m in CELL_MACHINES[firmware]) + " only")
        return cls(firmware, mach)


class Family(StrEnum):
    DEBIAN = "debian"
    EL = "el"


class SeedKind(StrEnum):
    """What a boot-test cell attaches for cloud-init, as a cloud would (``boottest/seeds.py``)."""
    NOVA = "nova"        # an OpenStack config drive exactly as Nova writes it
    OVIRT = "ovirt"      # the config drive oVirt's engine writes for a VM's Initial Run
    NOCLOUD = "nocloud"  # a ``cidata`` seed (meta-data, user-data, network-config)
    NONE = "none"        # nothing: cloud-init finds no datasource and gets out of the way


class Renderer(StrEnum):
    """cloud-init's network renderer, pinned to what the image runs (docs/cloud.md)."""
    NETWORKD = "networkd"                # Debian: systemd-networkd (no netplan, no ifupdown)
    NETWORK_MANAGER = "network-manager"  # EL9
    SYSCONFIG = "sysconfig"              # EL7: ifcfg files for the network-scripts
    ENI = "eni"                          # ifupdown's /etc/network/interfaces
    NETPLAN = "netplan"


# cloud-init's datasource names (cloudinit/sources/DataSource*.py): a typo there is a datasource that
# silently never matches.
DATASOURCES = frozenset({
    "Akamai", "AliYun", "AltCloud", "Azure", "Bigstep", "CloudCIX", "CloudSigma", "CloudStack",
    "ConfigDrive", "DigitalOcean", "Ec2", "Exoscale", "GCE", "Hetzner", "IBMCloud", "LXD", "MAAS",
    "NoCloud", "NWCS", "OpenNebula", "OpenStack", "Oracle", "OVF", "RbxCloud", "Scaleway", "SmartOS",
    "UpCloud", "VMware", "Vultr", "WSL", "None",
})
# The initramfs policies of a bootstrap build (install/initramfs.py says what each holds).
INITRAMFS_MODULES = ("virtual", "disk", "most")  # install/initramfs.py
# Root disk buses the boot test attaches (virtio-blk, or virtio-scsi with discard as clouds use for TRIM).
DISK_BUSES = ("virtio", "scsi")


@dataclass(frozen=True)
class Image:
    """What the artifact is and how an image store should describe it."""
    os_distro: str                     # Glance os_distro (libosinfo short id family), e.g. debian, centos
    os_version: str                    # e.g. "12", "7"
    family: Family                     # decides the package manager and config file layouts
    disk_gib: int = 3                  # virtual size of the disk
    os_type: str = "linux"
    firmware: Firmware = Firmware.BIOS  # the disk layout: bios, uefi or hybrid (both)
    machine_type: Machine = Machine.PC  # the chipset image stores are told to prefer
    min_ram_mib: int = 512
    compat: str = "1.1"                # qcow2 compat level of the artifact


@dataclass(frozen=True)
class Bootstrap:
    """The VM-less installer: mmdebstrap builds the root tree on the host."""
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = ""
    variant: str = "minbase"
    components: tuple[str, ...] = ("main",)
    include: tuple[str, ...] = ()      # system packages: kernel, bootloader, ssh, networking
    # what the initramfs holds (install/initramfs.py): "disk" (a root on any local disk: every storage
    # and filesystem driver, the clouds' paravirtual NICs) or "most" (Debian's default, every NIC too)
    initramfs_modules: str = "virtual"


@dataclass(frozen=True)
class VMInstall:
    """The unattended installer in a guest (kickstart for anaconda, preseed for debian-installer)."""
    template: str = ""                 # answer-file template under kickstart/
    variables: dict[str, str] = field(default_factory=dict)
    tree_url: str = ""                 # install tree with .treeinfo (EL) or netboot dir (Debian)
    iso_url: str = ""                  # or an install ISO: booted from, and attached as the CD-ROM
    iso_sha256: str = ""
    iso_checksums_url: str = ""        # the ISO's clearsigned checksum list (CentOS sha256sum.txt.asc)
    kernel: str = ""                   # path inside the tree or ISO; empty = from .treeinfo / the family's
    initrd: str = ""
    kernel_sha256: str = ""
    initrd_sha256: str = ""
    memory_mib: int = 2048
    vcpus: int = 2
    inactivity_seconds: int = 600
    timeout_seconds: int = 5400
    root_password_env: str = "IMAGEBUILD_ROOT_PASSWORD"
    root_password_file: str = ""
    kernel_args: tuple[str, ...] = ()  # appended to the installer's kernel command line
    kickstart_syntax: str = ""         # pykickstart version (e.g. RHEL7); default RHEL<os major> for EL
    media_trust: str = "pinned"        # "pinned": refuse unpinned media; "first-use": record the first hash;
    #                                    "signed": the hashes in the archive's signed index (Debian InRelease)
    keyring: str = ""                  # gpgv keyring for a Debian tree's InRelease (default: debian-archive-keyring)


@dataclass(frozen=True)
class Install:
    backend: Backend
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    vm: VMInstall = field(default_factory=VMInstall)


@dataclass(frozen=True)
class Packages:
    base: tuple[str, ...] = BASE_PACKAGES
    extra: tuple[str, ...] = ()        # what the recipe adds on top of the base set

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.base + self.extra))


@dataclass(frozen=True)
class Cloud:
    """What a cloud user gets (docs/cloud.md): cloud-init configured by our drop-in, a default user with a
    locked password and passwordless sudo, key-only SSH, and a root that grows to the disk it lands on.
    Off: none of it is installed, configured or checked."""
    enabled: bool = False
    packages: tuple[str, ...] = ()     # cloud-init and the root-growing tools, per family (the base recipes)
    default_user: str = ""             # the login the cloud's key is given to (debian; the distribution's on EL)
    # ds-identify detects among these; never one alone (then cloud-init skips detection), None last
    datasources: tuple[str, ...] = ("NoCloud", "ConfigDrive", "OpenStack", "None")
    renderer: Renderer = Renderer.NETWORKD
    growfs: bool = True                # x-systemd.growfs on / (systemd >= 236): grows with no seed too


@dataclass(frozen=True)
class Customize:
    disable: tuple[str, ...] = ()      # generalization steps to skip, by name


@dataclass(frozen=True)
class BootTest:
    enabled: bool = True
    memory_mib: int = 1024
    # One vCPU (a cloud's smallest flavour; vcpu-hotplug then makes it two live): under emulation a guest
    # boots almost as fast on one as on two, so two cells side by side (parallel) share the host's cores
    # instead of queueing (docs/speed.md).
    vcpus: int = 1
    timeout_seconds: int = 180         # for KVM; multiplied by tcg_factor under TCG
    tcg_factor: int = 4
    allow_failed_units: tuple[str, ...] = ()
    matrix: tuple[str, ...] = ()       # cells "firmware/machine" to boot; empty = every cell the layout claims
    # What operators do to running guests, done live in every cell and checked inside the guest
    # (boottest.LIVE_CHECKS): the domain starts with `vcpus` of `max_vcpus`, `memory_mib` with room for a
    # `hotplug_memory_mib` DIMM (maxMemory with slots, one NUMA cell), and a virtio balloon.
    max_vcpus: int = 4                 # vCPU hotplug adds one up to this
    hotplug_memory_mib: int = 512      # the DIMM hot-added (a multiple of the 128 MiB memory block)
    balloon_mib: int = 256             # how far the balloon shrinks the guest, then gives it back
    disk_buses: tuple[str, ...] = ("virtio", "scsi")  # root disk bus by cell, in turn (virtio-blk, virtio-scsi)
    skip_checks: tuple[str, ...] = ()  # in-guest checks an image family cannot pass (`invoke checks`)
    # The seed each cell attaches, in turn (with cloud.enabled); a matrix with fewer cells than kinds is
    # walked again until every kind has a cell. Each seeded cell grows its overlay to grow_gib first.
    seeds: tuple[SeedKind, ...] = (SeedKind.NOVA, SeedKind.OVIRT, SeedKind.NOCLOUD, SeedKind.NONE)
    grow_gib: int = 8
    parallel: int = 2                  # cells booted at once (each its own guest); 1 = one after another
    # A guest whose serial console stays silent this long before its agent answers has stalled (under
    # emulation a kernel now and then stops early in its boot): it is destroyed and the cell booted again
    # on a fresh overlay and MAC, up to stall_retries times; each stall is recorded. 0 = no stall watch.
    stall_seconds: int = 180
    stall_retries: int = 1

    def cells(self, firmware: Firmware) -> tuple[Cell, ...]:
        """The cells to boot, in a fixed order (validated at load time)."""
        if not self.matrix:
            return tuple(Cell(f, m) for f, m in CLAIMED_CELLS[firmware])
        return tuple(dict.fromkeys(Cell.parse(c) for c in self.matrix))


@dataclass(frozen=True)
class Glance:
    visibility: str = "private"        # private, shared, community or public
    tags: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)  # extra or overriding hw_*/os_* properties
    keep: int = 0                      # rotation: keep the newest N of this recipe (0 = keep all)
    latest_tag: str = ""               # a tag moved to the newest image of this recipe ("" = none)
    method: str = "auto"               # auto (import where offered), glance-direct or upload
    timeout_seconds: int = 1800        # for the image to become active after the bytes are sent
    stale_upload_minutes: int = 30     # another host's unfinished upload of this artifact is a leftover after this


@dataclass(frozen=True)
class Ovirt:
    storage_domain: str = ""           # where the disk is created (or $OVIRT_STORAGE_DOMAIN)
    template: bool = False             # also make a template from the uploaded disk
    # the template's default Initial Run (cloud.enabled): the default user and fresh SSH host keys
    initial_run: bool = False
    cluster: str = "Default"           # the cluster the template belongs to
    timeout_seconds: int = 1800
    stale_upload_minutes: int = 30     # another host's unfinished upload of this artifact is a leftover after this


@dataclass(frozen=True)
class Publish:
    # The firmware image stores are told to boot the image with: "auto" is the layout's own (bios or
    # uefi; hybrid: bios, which every cloud boots when told nothing); "secure-boot" asks for UEFI with
    # Secure Boot required. Whatever it is, a passed boot-test cell must prove it.
    firmware: str = "auto"
    glance: Glance = field(default_factory=Glance)
    ovirt: Ovirt = field(default_factory=Ovirt)


@dataclass(frozen=True)
class Recipe:
    name: str                          # the recipe file's name: the loader sets it, a file may not
    description: str
    image: Image
    install: Install
    version: str = "1"
    abstract: bool = False             # a base to extend, not to build
    extends: str = ""
    packages: Packages = field(default_factory=Packages)
    cloud: Cloud = field(default_factory=Cloud)
    customize: Customize = field(default_factory=Customize)
    boot_test: BootTest = field(default_factory=BootTest)
    publish: Publish = field(default_factory=Publish)
    sources: tuple[str, ...] = ()      # the files merged into this recipe, child first

    @property
    def all_packages(self) -> tuple[str, ...]:
        """What goes into the image on top of the system: the package set, and cloud's when enabled."""
        cloud = self.cloud.packages if self.cloud.enabled else ()
        return tuple(dict.fromkeys(self.packages.all + cloud))

    def to_json(self) -> str:
        return json.dumps(to_data(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        data = json.loads(text)
        return from_data(cls, data, origins={}, default_file="<json>")


def publish_firmware(recipe: Recipe) -> BootFirmware | None:
    """The firmware image stores are told to use (None: publish.firmware names one the disk cannot boot)."""
    want = recipe.publish.firmware
    if want == "auto":
        return BootFirmware.UEFI if recipe.image.firmware is Firmware.UEFI else BootFirmware.BIOS
    try:
        fw = BootFirmware(want)
    except ValueError:
        return None
    return fw if recipe.image.firmware in NEEDS_LAYOUT[fw] else None

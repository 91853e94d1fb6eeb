"""Recipes: TOML files in ``recipes/`` that may ``extends`` another recipe.

Loading merges the chain (tables merge key by key, anything else is replaced by the child), validates
every key against the dataclasses below, and returns a frozen ``Recipe`` that round-trips through JSON.
Errors name the file that set the offending key.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import RecipeError, raise_all

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+:_@-]*$")
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


class Firmware(StrEnum):
    """What the disk is laid out to boot from (its partition table and boot loaders)."""
    BIOS = "bios"      # MBR, one ext4 /, grub for i386-pc
    UEFI = "uefi"      # GPT, an EFI system partition and one ext4 /, grub (and shim) for x86_64-efi
    HYBRID = "hybrid"  # GPT, a BIOS boot partition, an ESP and one ext4 /, grub for both


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
LOGIN_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


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
    initramfs_modules: str = "disk"


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
    name: str
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


# -- generic (de)serialisation -------------------------------------------------------------------

def to_data(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, StrEnum):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table of strings"
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str, origins: dict[str, str], default_file: str,
             errors: list[RecipeError] | None = None) -> Any:
    def fail(msg: str) -> RecipeError:
        return RecipeError(msg, file=_origin(origins, key, default_file), key=key)

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a table, got {type(value).__name__}")
        return from_data(tp, value, origins=origins, default_file=default_file, prefix=key + ".", errors=errors)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail(f"expected {_type_name(tp)}, got {type(value).__name__}")
        item_tp = typing.get_args(tp)[0]
        return tuple(_convert(item_tp, v, f"{key}[{i}]", origins, default_file, errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str | int | bool) for v in value.values()):
            raise fail("expected a table of strings")
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        try:
            return tp(value)
        except ValueError:
            raise fail(f"expected {_type_name(tp)}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    raise fail(f"unsupported type {tp}")  # pragma: no cover - a schema bug


def _origin(origins: dict[str, str], key: str, default_file: str) -> str:
    probe = re.sub(r"\[\d+\]", "", key)
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return default_file


class _Incomplete(Exception):
    """A table had errors (already collected): its parent cannot be built either."""


def from_data(cls: Any, data: dict[str, Any], *, origins: dict[str, str], default_file: str,
              prefix: str = "", errors: list[RecipeError] | None = None) -> Any:
    """Build ``cls`` from plain data. Every unknown key, wrong type and missing key of the whole tree
    is collected, then raised together (``RecipeErrors``), so one run shows every mistake."""
    top = errors is None
    found: list[RecipeError] = [] if errors is None else errors
    before = len(found)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            found.append(RecipeError(f"unknown key (known keys here: {known})",
                                     file=_origin(origins, prefix + key, default_file), key=prefix + key))
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], prefix + name, origins, default_file, found)
            except RecipeError as exc:
                found.append(exc)
            except _Incomplete:
                pass
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            found.append(RecipeError("required key is missing", file=default_file, key=prefix + name))
    if len(found) > before:
        if top:
            raise_all(found)
        raise _Incomplete
    return cls(**kwargs)


# -- loading -------------------------------------------------------------------------------------

def recipe_dirs() -> list[Path]:
    """Where recipes are looked up: $IMAGEBUILD_RECIPE_PATH (colon-separated), then recipes/."""
    from .settings import current
    return list(current().recipe_path) + [PROJECT_ROOT / "recipes"]


def find_recipe(name: str, dirs: list[Path] | None = None) -> Path:
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise RecipeError("no such recipe file", file=path)
        return path
    if not NAME_RE.match(name):
        raise RecipeError(f"'{name}' is not a valid recipe name (lower-case letters, digits, . _ -)")
    for d in dirs or recipe_dirs():
        path = d / f"{name}.toml"
        if path.is_file():
            return path
    known = ", ".join(list_recipes(dirs)) or "none"
    raise RecipeError(f"no recipe named '{name}' (known recipes: {known})")


def list_recipes(dirs: list[Path] | None = None, *, include_abstract: bool = True) -> list[str]:
    names: dict[str, None] = {}
    for d in dirs or recipe_dirs():
        for p in sorted(d.glob("*.toml")):
            names.setdefault(p.stem, None)
    if include_abstract:
        return list(names)
    return [n for n in names if not load_recipe(n, dirs).abstract]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw[:exc.start].count(b"\n") + 1
        raise RecipeError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} (line {line}); "
                          "TOML files are UTF-8", file=path, line=line) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise RecipeError(f"not valid TOML: {exc}", file=path,
                          line=int(m.group(1)) if m else None) from None
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror}", file=path) from None


def _merge(base: dict[str, Any], child: dict[str, Any], origins: dict[str, str], file: str,
           prefix: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        dotted = prefix + key
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origins, file, dotted + ".")
        else:
            out[key] = value
            _mark(value, dotted, origins, file)
    return out


def _mark(value: Any, dotted: str, origins: dict[str, str], file: str) -> None:
    origins[dotted] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, f"{dotted}.{k}", origins, file)


def _display(path: Path) -> str:
    """A recipe file as the manifest shows it: relative to the project when it lives there."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path.resolve())


def load_recipe(name: str, dirs: list[Path] | None = None) -> Recipe:
    """Resolve ``name`` (a recipe name or a path to a .toml file) into a validated Recipe."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[str] = []
    path = find_recipe(name, dirs)
    while True:
        key = str(path.resolve())
        if key in seen:
            cycle = " -> ".join(Path(s).stem for s in seen + [key])
            raise RecipeError(f"'extends' makes a cycle: {cycle}", file=path, key="extends")
        seen.append(key)
        data = _read_toml(path)
        chain.append((path, data))
        parent = data.get("extends", "")
        if not parent:
            break
        if not isinstance(parent, str):
            raise RecipeError("expected a string (the name of a recipe)", file=path, key="extends")
        try:
            path = find_recipe(parent, [path.parent] + (dirs or recipe_dirs()))
        except RecipeError as exc:
            raise RecipeError(f"parent recipe not found: {exc}", file=path, key="extends") from None

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for path, data in reversed(chain):
        data = dict(data)
        data.pop("abstract", None) if path != chain[0][0] else None  # abstract is never inherited
        merged = _merge(merged, data, origins, str(path))
    leaf = chain[0][0]
    merged["name"] = leaf.stem
    merged["sources"] = [_display(p) for p, _ in chain]
    merged.setdefault("description", "")
    recipe: Recipe = from_data(Recipe, merged, origins=origins, default_file=str(leaf))
    validate(recipe, origins, str(leaf))
    return recipe


def validate(recipe: Recipe, origins: dict[str, str], leaf: str) -> None:
    """Rules beyond types, each naming the key."""
    problems: list[RecipeError] = []  # every rule is checked; all that fail are raised together

    def check(ok: bool, key: str, msg: str) -> None:
        if not ok:
            problems.append(RecipeError(msg, file=_origin(origins, key, leaf), key=key))

    check(NAME_RE.match(recipe.name) is not None, "name", "recipe file names must be lower-case")
    check(1 <= recipe.image.disk_gib <= 2048, "image.disk_gib", "must be between 1 and 2048")
    check(recipe.image.compat in ("0.10", "1.1"), "image.compat", "must be '0.10' or '1.1'")
    check(recipe.image.min_ram_mib >= 128, "image.min_ram_mib", "must be at least 128")
    for group in ("base", "extra"):
        for i, pkg in enumerate(getattr(recipe.packages, group)):
            check(PACKAGE_RE.match(pkg) is not None, f"packages.{group}[{i}]",
                  f"'{pkg}' is not a valid package name")
    _validate_cloud(recipe, check)
    for i, pkg in enumerate(recipe.install.bootstrap.include):
        check(PACKAGE_RE.match(pkg) is not None, f"install.bootstrap.include[{i}]",
              f"'{pkg}' is not a valid package name")
    bt = recipe.boot_test
    check(bt.memory_mib >= 256, "boot_test.memory_mib", "must be at least 256")
    check(1 <= bt.vcpus <= 64, "boot_test.vcpus", "must be between 1 and 64")
    check(bt.timeout_seconds >= 10, "boot_test.timeout_seconds", "must be at least 10")
    check(bt.tcg_factor >= 1, "boot_test.tcg_factor", "must be at least 1")
    check(bt.stall_seconds == 0 or bt.stall_seconds >= 10, "boot_test.stall_seconds",
          "must be 0 (no stall watch) or at least 10")
    check(0 <= bt.stall_retries <= 3, "boot_test.stall_retries", "must be 0 to 3")
    check(bt.vcpus <= bt.max_vcpus <= 64, "boot_test.max_vcpus",
          f"must be between boot_test.vcpus ({bt.vcpus}) and 64")
    check(bt.max_vcpus > bt.vcpus or "vcpu-hotplug" in bt.skip_checks, "boot_test.max_vcpus",
          f"must be above boot_test.vcpus ({bt.vcpus}) to hot-add a vCPU (or skip_checks = [\"vcpu-hotplug\"])")
    check(bt.hotplug_memory_mib >= 128 and bt.hotplug_memory_mib % 128 == 0, "boot_test.hotplug_memory_mib",
          "must be a multiple of 128 (the guest's memory block size), at least 128")
    check(0 < bt.balloon_mib <= bt.memory_mib - 256, "boot_test.balloon_mib",
          f"must leave the guest at least 256 MiB of its {bt.memory_mib} (boot_test.memory_mib)")
    for i, bus in enumerate(bt.disk_buses):
        check(bus in DISK_BUSES, f"boot_test.disk_buses[{i}]", f"must be one of {', '.join(DISK_BUSES)}")
    check(bool(bt.disk_buses), "boot_test.disk_buses", "must name at least one bus")
    check(1 <= bt.parallel <= 8, "boot_test.parallel", "must be between 1 and 8 (cells booted at once)")
    gl = recipe.publish.glance
    check(gl.visibility in GLANCE_VISIBILITIES, "publish.glance.visibility",
          "must be one of " + ", ".join(GLANCE_VISIBILITIES))
    check(gl.keep >= 0, "publish.glance.keep", "must be 0 (keep all) or more")
    check(gl.method in ("auto", "glance-direct", "upload"), "publish.glance.method",
          "must be 'auto', 'glance-direct' or 'upload'")
    check(gl.timeout_seconds >= 10, "publish.glance.timeout_seconds", "must be at least 10")
    for i, tag in enumerate(gl.tags + ((gl.latest_tag,) if gl.latest_tag else ())):
        check(0 < len(tag) <= 255 and tag.strip() == tag, f"publish.glance.tags[{i}]",
              f"'{tag}' is not a usable Glance tag (1-255 characters, no outer spaces)")
    for key in gl.properties:
        check(key not in GLANCE_RESERVED and not key.startswith(("imagebuild_", "os_glance")),
              f"publish.glance.properties.{key}",
              "is set by Glance or by imagebuild itself (provenance) and cannot be overridden")
        check(key not in PROVEN_PROPERTIES, f"publish.glance.properties.{key}",
              "is set from the boot-test cells that passed: choose it with publish.firmware and "
              "image.machine_type")
    check(recipe.publish.ovirt.timeout_seconds >= 10, "publish.ovirt.timeout_seconds",
          "must be at least 10")
    _validate_firmware(recipe, check)
    if recipe.abstract:
        raise_all(problems)
        return
    if recipe.install.backend is Backend.BOOTSTRAP:
        check(recipe.image.family is Family.DEBIAN, "install.backend",
              "the bootstrap backend builds Debian-family images only (mmdebstrap)")
        b = recipe.install.bootstrap
        check(bool(re.match(r"^https?://", b.mirror)), "install.bootstrap.mirror", "must be an http(s) URL")
        check(b.suite not in ("stable", "testing", "unstable", "oldstable"), "install.bootstrap.suite",
              "name the release (e.g. 'bookworm'), not a moving alias: the image must be reproducible")
        check(b.variant in ("minbase", "important", "required", "standard", "apt", "essential"),
              "install.bootstrap.variant", f"unknown mmdebstrap variant '{b.variant}'")
        check(b.initramfs_modules in INITRAMFS_MODULES, "install.bootstrap.initramfs_modules",
              f"must be one of {', '.join(INITRAMFS_MODULES)}, not '{b.initramfs_modules}'")
    else:
        _validate_vm(recipe, check)
        check(recipe.image.firmware is Firmware.BIOS, "image.firmware",
              "a VM install (kickstart/preseed) makes BIOS (MBR) images so far; UEFI and hybrid layouts "
              "are made by the bootstrap installer")
    raise_all(problems)


def _validate_cloud(recipe: Recipe, check: Any) -> None:
    cl = recipe.cloud
    for i, pkg in enumerate(cl.packages):
        check(PACKAGE_RE.match(pkg) is not None, f"cloud.packages[{i}]", f"'{pkg}' is not a valid package name")
    for i, ds in enumerate(cl.datasources):
        check(ds in DATASOURCES, f"cloud.datasources[{i}]",
              f"unknown cloud-init datasource '{ds}' (known: {', '.join(sorted(DATASOURCES))})")
    real = [ds for ds in cl.datasources if ds != "None"]
    check(len(real) >= 3 and list(cl.datasources[-1:]) == ["None"] and "None" not in cl.datasources[:-1],
          "cloud.datasources", "needs three or more datasources, then \"None\" last: with one (or one and None) "
          "cloud-init skips ds-identify's detection and waits on that one source at every boot")
    check(len(set(cl.datasources)) == len(cl.datasources), "cloud.datasources", "names a datasource twice")
    check(cl.growfs is False or not (recipe.image.family is Family.EL and recipe.image.os_version == "7"),
          "cloud.growfs", "x-systemd.growfs needs systemd 236 or newer; EL7 has 219 (cloud-init's growpart "
          "and resizefs grow its root)")
    check(0 < len(recipe.boot_test.seeds) <= len(SeedKind), "boot_test.seeds",
          f"must name 1 to {len(SeedKind)} seed kinds")
    check(len(set(recipe.boot_test.seeds)) == len(recipe.boot_test.seeds), "boot_test.seeds", "names a kind twice")
    check(recipe.boot_test.grow_gib > recipe.image.disk_gib, "boot_test.grow_gib",
          f"must be above image.disk_gib ({recipe.image.disk_gib}): the seeded cells prove / grows into it")
    if not cl.enabled:
        return
    check(bool(cl.default_user), "cloud.default_user", "a cloud image needs a default user (the key's login)")
    check(not cl.default_user or (LOGIN_RE.match(cl.default_user) is not None and cl.default_user != "root"),
          "cloud.default_user", f"'{cl.default_user}' is not a valid login name (lower-case letters, digits, "
          "_ and -, starting with a letter or _, at most 32; not root)")
    check("cloud-init" in cl.packages, "cloud.packages", "must include cloud-init")


# The initramfs policies of a bootstrap build (install/initramfs.py says what each holds).
INITRAMFS_MODULES = ("disk", "most")
# Root disk buses the boot test attaches (virtio-blk, or virtio-scsi with discard as clouds use for TRIM).
DISK_BUSES = ("virtio", "scsi")
# The smallest root filesystem a golden image is given beside its boot partitions.
MIN_ROOT_MIB = 1024


def _validate_firmware(recipe: Recipe, check: Any) -> None:
    """Disk layout, boot-test matrix and published firmware must agree with each other."""
    from .disklayout import layout_for
    img = recipe.image
    root_mib = img.disk_gib * 1024 - layout_for(img.firmware).overhead_mib
    check(root_mib >= MIN_ROOT_MIB, "image.disk_gib",
          f"{img.disk_gib} GiB leaves {root_mib} MiB for / beside the {img.firmware} boot partitions; "
          f"/ needs at least {MIN_ROOT_MIB} MiB")
    claimed = CLAIMED_CELLS[img.firmware]
    unparsed = False  # check() collects rather than raises: cells() below would raise on a bad cell
    for i, text in enumerate(recipe.boot_test.matrix):
        try:
            cell = Cell.parse(text)
        except ValueError as exc:
            check(False, f"boot_test.matrix[{i}]", str(exc))
            unparsed = True
            continue
        check((cell.firmware, cell.machine) in claimed, f"boot_test.matrix[{i}]",
              f"'{cell}' cannot boot a {img.firmware} image (its cells: "
              + ", ".join(str(Cell(f, m)) for f, m in claimed) + ")")
    published = publish_firmware(recipe)
    check(published is not None, "publish.firmware",
          f"must be 'auto' or one of {', '.join(f.value for f in BootFirmware)} that a {img.firmware} "
          f"image can boot, not {recipe.publish.firmware!r}")
    if published is not None:
        cells = recipe.boot_test.cells(img.firmware) if recipe.boot_test.matrix and not unparsed else ()
        check(not cells or any(c.firmware is published for c in cells), "boot_test.matrix",
              f"has no {published} cell, so the {published} firmware that publish.firmware advertises "
              "could never be proven")
        check(published is BootFirmware.BIOS or img.machine_type is Machine.Q35, "publish.firmware",
              f"{published} is booted on q35 only, and image.machine_type is {img.machine_type}: "
              "set machine_type = \"q35\" in [image]")


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


SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _validate_vm(recipe: Recipe, check: Any) -> None:
    """The VM backend's rules (answer-file contents are checked by ``answerfile.validate_recipe``)."""
    vm = recipe.install.vm
    check(bool(vm.template), "install.vm.template", "a VM install needs an answer-file template")
    # The template's suffix names the installer: a kickstart drives anaconda (or anything that reads
    # one, like the tests' scripted installer), a preseed drives debian-installer.
    check(vm.template.endswith((".ks.j2", ".preseed.j2")), "install.vm.template",
          f"an answer-file template is a '*.ks.j2' kickstart or a '*.preseed.j2' preseed, not '{vm.template}'")
    check(not vm.template.endswith(".preseed.j2") or recipe.image.family is Family.DEBIAN,
          "install.vm.template", "a preseed drives debian-installer: only for family 'debian'")
    check(not vm.template.endswith(".ks.j2") or recipe.image.family is Family.EL or bool(vm.kickstart_syntax),
          "install.vm.kickstart_syntax", "a kickstart for a non-EL family must name its pykickstart syntax")
    check(bool(vm.tree_url) != bool(vm.iso_url), "install.vm.iso_url" if vm.iso_url else "install.vm.tree_url",
          "set exactly one install source: install.vm.tree_url or install.vm.iso_url "
          "(a recipe extending a tree recipe sets tree_url = \"\")")
    for key in ("tree_url", "iso_url", "iso_checksums_url"):
        value = getattr(vm, key)
        check(not value or bool(re.match(r"^(https?|file)://", value)), f"install.vm.{key}",
              "must be an http(s) or file URL")
    check(not vm.iso_checksums_url or bool(vm.iso_url), "install.vm.iso_checksums_url",
          "only for an install ISO (install.vm.iso_url)")
    check(vm.iso_sha256 == "" or SHA256_RE.match(vm.iso_sha256) is not None, "install.vm.iso_sha256",
          "must be a sha256 (64 lower-case hex digits)")
    for key in ("kernel", "initrd"):
        path = getattr(vm, key)
        check(not path.startswith("/") and ".." not in path.split("/"), f"install.vm.{key}",
              "must be a path inside the install tree")
    for key in ("kernel_sha256", "initrd_sha256"):
        value = getattr(vm, key)
        check(value == "" or SHA256_RE.match(value) is not None, f"install.vm.{key}",
              "must be a sha256 (64 lower-case hex digits)")
    for name in vm.variables:
        check(VARIABLE_RE.match(name) is not None, f"install.vm.variables.{name}",
              "variable names are identifiers (letters, digits, _)")
    check(vm.media_trust in ("pinned", "first-use", "signed"), "install.vm.media_trust",
          "must be 'pinned', 'first-use' or 'signed'")
    check(vm.memory_mib >= 512, "install.vm.memory_mib", "must be at least 512")
    check(1 <= vm.vcpus <= 64, "install.vm.vcpus", "must be between 1 and 64")
    check(vm.inactivity_seconds >= 30, "install.vm.inactivity_seconds", "must be at least 30")
    check(vm.timeout_seconds > vm.inactivity_seconds, "install.vm.timeout_seconds",
          "must be longer than install.vm.inactivity_seconds")
    check(VARIABLE_RE.match(vm.root_password_env) is not None, "install.vm.root_password_env",
          "must be the name of an environment variable")

"""libvirt domains: the XML we boot, and a lifecycle where the domain is always destroyed.

Domains are transient (``createXML``): nothing is defined that could outlive the build, and the name
carries the build id so ``invoke clean`` can find what a killed build left running.
"""

from __future__ import annotations

import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .accel import Accel
from .errors import ImageBuildError, ToolMissing
from .events import NULL_REPORTER, Reporter
from .recipe import BootFirmware

URI = "qemu:///system"
MEMORY_SLOTS = 4
AGENT_CHANNEL = "org.qemu.guest_agent.0"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)

try:
    import libvirt
except ImportError:  # pragma: no cover
    libvirt = None


class DomainError(ImageBuildError):
    """libvirt refused to start (or to destroy) a domain."""


# Debian's ovmf package (2022.11): 4 MiB flash images. The plain pair boots UEFI without Secure Boot;
# the ".ms" pair is the Secure Boot build (needs SMM, so q35) with Microsoft's keys enrolled in its
# VARS, as on a cloud host that offers Secure Boot: a shim signed by Microsoft's UEFI CA boots, an
# unsigned EFI binary is refused.
OVMF_DIR = Path("/usr/share/OVMF")
OVMF = {
    BootFirmware.UEFI: ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
    BootFirmware.SECURE_BOOT: ("OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.fd"),
}


def firmware_files(firmware: BootFirmware) -> tuple[Path, Path]:
    """(CODE, VARS template) of OVMF for a UEFI firmware; ToolMissing names the package if absent."""
    if firmware not in OVMF:
        return Path(), Path()  # SeaBIOS is built into qemu
    code, vars_ = (OVMF_DIR / name for name in OVMF[firmware])
    missing = [str(p) for p in (code, vars_) if not p.is_file()]
    if missing:
        raise ToolMissing(f"{', '.join(missing)} missing: the {firmware} boot-test cells need OVMF "
                          "(install the Debian package ovmf; scripts/setup-host does)")
    return code, vars_


def random_mac() -> str:
    """A locally administered MAC in QEMU's 52:54:00 range, fresh for every boot."""
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    format: str
    target: str = "vda"
    bus: str = "virtio"
    readonly: bool = False
    device: str = "disk"               # or "cdrom" (an install ISO; read-only, on IDE or SATA)


@dataclass(frozen=True)
class DomainSpec:
    name: str
    accel: Accel
    memory_mib: int
    vcpus: int
    disks: tuple[DiskSpec, ...]
    console_log: Path
    mac: str | None = None              # None: no NIC
    machine: str = "pc"
    kernel: Path | None = None          # direct kernel boot (installers)
    initrd: Path | None = None
    cmdline: str = ""
    guest_agent: bool = True
    extra_channels: tuple[tuple[str, Path], ...] = field(default_factory=tuple)  # (name, unix socket)
    max_vcpus: int = 0                  # > vcpus: vCPUs can be hot-added up to this
    max_memory_mib: int = 0             # > memory_mib: DIMMs can be hot-added up to this (slots, NUMA cell)
    balloon: bool = False               # a virtio balloon (with stats) instead of none
    loader: Path | None = None          # OVMF CODE (read-only pflash); None: SeaBIOS
    nvram: Path | None = None           # this domain's own copy of the VARS file
    secure_boot: bool = False           # the loader enforces Secure Boot (needs q35 and SMM)
    uuid: str = ""                      # the domain's (and so the DMI system) UUID; "" = libvirt's own
    ssh_port: int = 0                   # > 0: the NIC comes from QEMU's user network, guest port 22 forwarded
                                        # to this loopback port (libvirt 9.0's user interface cannot forward)


def cdrom(iso: Path, machine: str) -> DiskSpec:
    """An ISO as the guest's CD-ROM drive: IDE on the i440fx "pc" machine, SATA (AHCI) on q35."""
    if "q35" in machine:
        return DiskSpec(iso, "raw", target="sda", bus="sata", readonly=True, device="cdrom")
    return DiskSpec(iso, "raw", target="hdc", bus="ide", readonly=True, device="cdrom")


def domain_xml(spec: DomainSpec) -> str:
    dom = ET.Element("domain", type="kvm" if spec.accel is Accel.KVM else "qemu")
    ET.SubElement(dom, "name").text = spec.name
    if spec.uuid:
        ET.SubElement(dom, "uuid").text = spec.uuid
    if spec.max_memory_mib > spec.memory_mib:
        # memory hotplug: room for DIMMs above the boot memory, which must sit in a NUMA cell
        ET.SubElement(dom, "maxMemory", slots=str(MEMORY_SLOTS), unit="MiB").text = str(spec.max_memory_mib)
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(dom, "currentMemory", unit="MiB").text = str(spec.memory_mib)
    if spec.max_vcpus > spec.vcpus:
        ET.SubElement(dom, "vcpu", placement="static", current=str(spec.vcpus)).text = str(spec.max_vcpus)
    else:
        ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine=spec.machine).text = "hvm"
    if spec.loader is not None:
        ET.SubElement(os_, "loader", readonly="yes", secure="yes" if spec.secure_boot else "no",
                      type="pflash").text = str(spec.loader)
        ET.SubElement(os_, "nvram").text = str(spec.nvram)
    if spec.kernel is not None:
        ET.SubElement(os_, "kernel").text = str(spec.kernel)
        if spec.initrd is not None:
            ET.SubElement(os_, "initrd").text = str(spec.initrd)
        ET.SubElement(os_, "cmdline").text = spec.cmdline
    else:
        ET.SubElement(os_, "boot", dev="hd")
    feats = ET.SubElement(dom, "features")
    ET.SubElement(feats, "acpi")
    ET.SubElement(feats, "apic")
    if spec.secure_boot:
        ET.SubElement(feats, "smm", state="on")  # OVMF's Secure Boot build keeps its variables in SMM
    cpu = ET.SubElement(dom, "cpu", mode="host-passthrough") if spec.accel is Accel.KVM else None
    if spec.max_memory_mib > spec.memory_mib:
        cpu = cpu if cpu is not None else ET.SubElement(dom, "cpu")
        ET.SubElement(ET.SubElement(cpu, "numa"), "cell", id="0", cpus=f"0-{max(spec.vcpus, spec.max_vcpus) - 1}",
                      memory=str(spec.memory_mib), unit="MiB")
    # Any stop ends the domain: an installer's reboot must not start it again.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    dev = ET.SubElement(dom, "devices")
    if any(d.bus == "scsi" for d in spec.disks):
        ET.SubElement(dev, "controller", type="scsi", index="0", model="virtio-scsi")
    for d in spec.disks:
        disk = ET.SubElement(dev, "disk", type="file", device=d.device)
        if d.device == "cdrom":
            ET.SubElement(disk, "driver", name="qemu", type=d.format)
        else:
            ET.SubElement(disk, "driver", name="qemu", type=d.format, discard="unmap", cache="unsafe")
        ET.SubElement(disk, "source", file=str(d.path))
        ET.SubElement(disk, "target", dev=d.target, bus=d.bus)
        if d.readonly or d.device == "cdrom":
            ET.SubElement(disk, "readonly")
    if spec.mac is not None and not spec.ssh_port:
        nic = ET.SubElement(dev, "interface", type="user")
        ET.SubElement(nic, "mac", address=spec.mac)
        ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(dev, "serial", type="file")
    ET.SubElement(serial, "source", path=str(spec.console_log), append="off")
    ET.SubElement(serial, "target", port="0")
    if spec.guest_agent:
        ch = ET.SubElement(dev, "channel", type="unix")
        ET.SubElement(ch, "source", mode="bind")
        ET.SubElement(ch, "target", type="virtio", name=AGENT_CHANNEL)
    for name, sock in spec.extra_channels:
        ch = ET.SubElement(dev, "channel", type="unix")
        ET.SubElement(ch, "source", mode="bind", path=str(sock))
        ET.SubElement(ch, "target", type="virtio", name=name)
    rng = ET.SubElement(dev, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    if spec.balloon:
        balloon = ET.SubElement(dev, "memballoon", model="virtio")
        ET.SubElement(balloon, "stats", period="2")  # libvirt's balloon stats, compared with the guest's
    else:
        ET.SubElement(dev, "memballoon", model="none")
    ET.SubElement(dev, "graphics", type="vnc", listen="127.0.0.1", autoport="yes")  # screenshots
    ET.SubElement(dev, "video").append(ET.Element("model", type="vga"))
    # qemu runs as root without relabelling: the scratch files live in our 0700 work dir.
    sec = ET.SubElement(dom, "seclabel", type="static", model="dac", relabel="no")
    ET.SubElement(sec, "label").text = "+0:+0"
    if spec.mac is not None and spec.ssh_port:
        # the same virtio NIC on the same user network as <interface type='user'>, defined on QEMU's
        # command line so that a host port reaches the guest's sshd; on a slot of the root bus that libvirt
        # leaves free (it numbers its own devices upwards from slot 2)
        bus = "pcie.0" if "q35" in spec.machine else "pci.0"
        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in ("-netdev", f"user,id=imagebuild-net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
                    "-device", f"virtio-net-pci,netdev=imagebuild-net0,mac={spec.mac},bus={bus},addr=0x10"):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def connect() -> Any:
    if libvirt is None:
        raise ToolMissing("the libvirt Python bindings are missing: install python3-libvirt and use a venv "
                          "made from /usr/bin/python3 with --system-site-packages")
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions; no stderr noise
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as exc:
        raise ToolMissing(f"cannot connect to libvirt at {URI}: {exc}. Start it with scripts/start-services "
                          "(libvirtd and virtlogd)") from None


@contextmanager
def transient_domain(spec: DomainSpec, reporter: Reporter = NULL_REPORTER) -> Iterator[Any]:
    """Start a transient domain; destroy it on the way out, pass or fail, interrupt included."""
    conn = connect()
    xml = domain_xml(spec)
    reporter.log(f"libvirt: starting transient domain {spec.name} ({spec.accel})")
    try:
        try:
            dom = conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise DomainError(f"libvirt refused to start domain {spec.name}: {exc}") from None
        except BaseException:
            # an interrupt that arrived while libvirt started it (raised once createXML returns, before
            # the domain is ours to destroy below): find it by name
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(spec.name).destroy()
                reporter.log(f"libvirt: destroyed {spec.name} (interrupted while it started)")
            raise
        try:
            yield dom
        finally:
            try:
                if dom.isActive():
                    dom.destroy()
                    reporter.log(f"libvirt: destroyed {spec.name}")
            except libvirt.libvirtError as exc:
                if dom_exists(conn, spec.name):
                    raise DomainError(f"could not destroy domain {spec.name}: {exc}") from None
    finally:
        conn.close()


def dom_exists(conn: Any, name: str) -> bool:
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False


def screenshot(dom: Any, dest: Path) -> bool:
    """Save the guest's screen (PPM) next to the logs; best effort, for failed installs."""
    try:
        conn = dom.connect()
        stream = conn.newStream(0)
        dom.screenshot(stream, 0, 0)
        with open(dest, "wb") as f:
            stream.recvAll(lambda _s, data, fh: fh.write(data), f)
        stream.finish()
        return True
    except Exception:  # noqa: BLE001 - a missing screenshot must not hide the real failure
        return False

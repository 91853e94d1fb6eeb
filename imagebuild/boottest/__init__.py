"""Boot test: the image boots as a fresh clone in every cell of its matrix and checks run inside the guest.

A cell is a firmware on a machine type (``bios/pc``, ``bios/q35``, ``uefi/q35``, ``secure-boot/q35``):
the layout claims the cells it can boot (``recipe.CLAIMED_CELLS``) and a recipe may narrow them. Cells
run one after another (two cores, TCG): each gets its own throwaway qcow2 overlay (the artifact is only
read, its sha256 is verified unchanged afterwards), a virtio NIC on a fresh random MAC, a fresh copy of
OVMF's VARS file for the UEFI cells, and a serial console captured to ``boot-console-CELL.log``. Checks
run through the QEMU guest agent (``guest-exec``): no password, no SSH key, nothing added to the image.
Besides the image's own checks, each cell proves it booted the way it claims: the firmware (EFI or not,
Secure Boot state read from the EFI variable) and the chipset (DMI product name).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..accel import Accel, AccelChoice
from ..disklayout import ESP_MOUNT, layout_for
from ..domain import (
    MEMORY_SLOTS,
    DiskSpec,
    DomainError,
    DomainSpec,
    firmware_files,
    random_mac,
    screenshot,
    transient_domain,
)
from ..errors import BootTestFailed, CommandFailed
from ..events import CellReporter, Reporter
from ..recipe import BootFirmware, Cell, Family, Machine, Recipe
from ..run import run


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False              # not run in this cell, for the reason in ``detail``
    seconds: float = 0.0               # how long the check took in the running guest


@dataclass
class CellResult:
    """One cell of the matrix: how it booted and what the guest said."""
    cell: str                          # "uefi/q35"
    firmware: str
    machine: str
    disk_bus: str                      # virtio (virtio-blk) or scsi (virtio-scsi)
    passed: bool
    accelerator: str
    mac: str
    seconds_to_agent: float | None     # None: the agent never answered
    seconds: float                     # the whole cell: overlay, boot, checks, teardown
    checks: list[Check]
    console_log: str                   # file name beside the artifact
    stalled: list[str] = field(default_factory=list)  # attempts whose console went silent before the agent

    def to_data(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        return d


@dataclass
class BootTestResult:
    passed: bool
    accelerator: str
    cells: list[CellResult]

    def to_data(self) -> dict[str, Any]:
        return {"passed": self.passed, "accelerator": self.accelerator,
                "cells": [c.to_data() for c in self.cells]}

    def cell(self, name: str) -> CellResult:
        return next(c for c in self.cells if c.cell == name)


class _CellFailed(Exception):
    """A cell's checks failed (its result says how); only marks the cell's step as failed."""


class AgentGone(BootTestFailed):
    """The guest agent did not answer (not up yet, or the guest hung or died)."""


class BootStalled(BootTestFailed):
    """The guest's console went silent before its agent answered: under emulation, a guest kernel now and
    then stops early in its boot (seen here once in a day's builds, at 1.9 s of kernel time)."""

    def __init__(self, summary: str, tail: str) -> None:
        super().__init__(f"{summary}; last console lines:\n{tail}")
        self.summary = summary


class Agent:
    """The QEMU guest agent of a running domain."""

    def __init__(self, dom: Any) -> None:
        import libvirt_qemu
        self.dom = dom
        self._qmp = libvirt_qemu.qemuAgentCommand

    def call(self, command: str, args: dict[str, Any] | None = None, timeout: int = 10) -> Any:
        import libvirt
        msg = {"execute": command, **({"arguments": args} if args else {})}
        try:
            return json.loads(self._qmp(self.dom, json.dumps(msg), timeout, 0))["return"]
        except libvirt.libvirtError as exc:
            raise AgentGone(f"the guest agent stopped answering ({command}): {exc}") from None

    def start(self, argv: list[str]) -> int:
        """Start ``argv`` in the guest and return its PID at once (``wait`` collects it)."""
        return int(self.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})["pid"])

    def wait(self, pid: int, argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
        """The exit code, stdout and stderr of a command ``start`` began."""
        deadline = time.monotonic() + timeout
        pause = 0.05  # most checks' commands end within 0.1-0.3 s even under TCG: ask soon, then back off
        while time.monotonic() < deadline:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode("utf-8", "replace")
                err = base64.b64decode(st.get("err-data", "")).decode("utf-8", "replace")
                return int(st.get("exitcode", -1)), out, err
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        raise BootTestFailed(f"in-guest command did not finish within {timeout:.0f}s: {' '.join(argv)}")

    def exec(self, argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
        return self.wait(self.start(argv), argv, timeout)


def _console_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:])


def _console_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def wait_for_agent(dom: Any, agent: Agent, deadline: float, console: Path, *, stall_seconds: int = 0) -> None:
    """Ping the agent until it answers; raise if the guest stops, the deadline passes, or (``stall_seconds``)
    its serial console has not grown for that long."""
    size, grew = _console_size(console), time.monotonic()
    while time.monotonic() < deadline:
        now_size = _console_size(console)
        if now_size != size:
            size, grew = now_size, time.monotonic()
        elif stall_seconds and time.monotonic() - grew > stall_seconds:
            raise BootStalled(f"the console was silent for {stall_seconds}s before the guest agent answered "
                              f"({size} bytes written)", _console_tail(console, 12))
        if not dom.isActive():
            raise BootTestFailed("the guest stopped before its agent answered; last console lines:\n"
                                 + _console_tail(console))
        try:
            agent.call("guest-ping", timeout=5)
            return
        except AgentGone:  # not connected yet: libvirt says so at once, so asking often costs nothing
            time.sleep(0.5)
    raise BootTestFailed("the guest agent did not answer before the boot timeout; last console lines:\n"
                         + _console_tail(console))


# -- the checks, each a function of (agent, context) -> Check ------------------------------------

@dataclass(frozen=True)
class CheckContext:
    recipe: Recipe
    mac: str
    deadline: float
    cell: Cell
    dom: Any = None                    # the libvirt domain, for the live operations
    disk_bus: str = "virtio"
    system_wait: int | None = None     # the guest PID of `systemctl is-system-running --wait`, if started


CheckFn = Callable[[Agent, CheckContext], Check]


def system_wait_argv(ctx: CheckContext) -> list[str]:
    wait = max(10, int(ctx.deadline - time.monotonic()))
    return ["/usr/bin/timeout", str(wait), "systemctl", "is-system-running", "--wait"]


def check_system_running(agent: Agent, ctx: CheckContext) -> Check:
    """systemd finished starting the first boot's units, none failed. ``_run_checks`` starts the wait
    before the checks that do not need it (``ctx.system_wait``) and collects it here."""
    argv = system_wait_argv(ctx)
    pid = ctx.system_wait if ctx.system_wait is not None else agent.start(argv)
    _, out, _ = agent.wait(pid, argv, timeout=max(10, ctx.deadline - time.monotonic()) + 15)
    state = out.strip()
    _, failed, _ = agent.exec(["systemctl", "list-units", "--failed", "--plain", "--no-legend"])
    units = [ln.split()[0] for ln in failed.splitlines() if ln.strip()]
    bad = [u for u in units if u not in ctx.recipe.boot_test.allow_failed_units]
    if state not in ("running", "degraded"):
        return Check("multi-user", False, f"system state is {state!r}, not running")
    if bad:
        return Check("multi-user", False, f"failed units: {', '.join(bad)}")
    return Check("multi-user", True, f"state {state}" + (f" (allowed failures: {', '.join(units)})"
                                                          if units else ", no failed units"))


def _nic(agent: Agent, mac: str) -> dict[str, Any] | None:
    _, out, _ = agent.exec(["ip", "-j", "addr", "show"])
    for link in json.loads(out or "[]"):
        if link.get("address", "").lower() == mac.lower():
            return dict(link)
    return None


def check_fresh_mac(agent: Agent, ctx: CheckContext) -> Check:
    nic = _nic(agent, ctx.mac)
    if nic is None:
        return Check("fresh-mac", False, f"no interface has the MAC {ctx.mac} the test gave the guest")
    return Check("fresh-mac", True, f"{nic['ifname']} has {ctx.mac}")


def check_dhcp(agent: Agent, ctx: CheckContext) -> Check:
    # DHCP may still be negotiating right after boot: give it until the deadline.
    while True:
        nic = _nic(agent, ctx.mac)
        addrs = [a for a in (nic or {}).get("addr_info", [])
                 if a.get("family") == "inet" and a.get("dynamic")]
        if nic is not None and addrs:
            return Check("dhcp", True, f"{nic['ifname']} leased {addrs[0]['local']}/{addrs[0]['prefixlen']}")
        if time.monotonic() > ctx.deadline:
            return Check("dhcp", False, "no DHCP-assigned IPv4 address on the test NIC")
        time.sleep(2)


def check_single_root(agent: Agent, ctx: CheckContext) -> Check:
    layout = layout_for(ctx.recipe.image.firmware)
    _, mounts, _ = agent.exec(["cat", "/proc/self/mounts"])
    block = {ln.split()[1]: ln.split()[2] for ln in mounts.splitlines() if ln.startswith("/dev/")}
    _, lsblk, _ = agent.exec(["lsblk", "-J", "-o", "NAME,TYPE,FSTYPE"])
    parts = [c for d in json.loads(lsblk).get("blockdevices", []) for c in d.get("children", []) or []
             if c.get("type") == "part"]
    want = {"/": "ext4", **({ESP_MOUNT: "vfat"} if layout.esp is not None else {})}
    ok = block == want and len(parts) == len(layout.partitions)
    return Check("single-root", ok, f"block-device mounts {dict(sorted(block.items()))}, {len(parts)} "
                                    f"partition(s); a {layout.firmware} image has {want} on "
                                    f"{len(layout.partitions)}")


def check_no_swap(agent: Agent, ctx: CheckContext) -> Check:
    _, out, _ = agent.exec(["cat", "/proc/swaps"])
    active = out.strip().splitlines()[1:]
    return Check("no-swap", not active, "no swap active" if not active else f"swap active: {active}")


def check_packages(agent: Agent, ctx: CheckContext) -> Check:
    wanted = list(ctx.recipe.all_packages)
    if ctx.recipe.image.family is Family.DEBIAN:
        _, out, _ = agent.exec(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        have = {ln.split()[0] for ln in out.splitlines() if ln.split()[1:2] == ["ii"]}
    else:
        _, out, _ = agent.exec(["rpm", "-qa", "--qf", "%{NAME}\n"])
        have = set(out.split())
    missing = [p for p in wanted if p not in have]
    return Check("packages", not missing,
                 f"all of {' '.join(wanted)} installed" if not missing else f"missing: {' '.join(missing)}")


def check_machine_id(agent: Agent, ctx: CheckContext) -> Check:
    _, out, _ = agent.exec(["cat", "/etc/machine-id"])
    mid = out.strip()
    ok = len(mid) == 32 and all(c in "0123456789abcdef" for c in mid)
    return Check("machine-id", ok, f"generated at first boot: {mid}" if ok else f"machine-id is {mid!r}")


def check_ssh_hostkeys(agent: Agent, ctx: CheckContext) -> Check:
    rc, out, _ = agent.exec(["sh", "-c", "ls /etc/ssh/ssh_host_*_key"])
    keys = out.split()
    if rc != 0 or not keys:
        return Check("ssh-hostkeys", False, "no SSH host keys after boot")
    # the fingerprint lets two clones be compared: each must have made its own keys
    _, fp, _ = agent.exec(["ssh-keygen", "-l", "-f", keys[-1] + ".pub"])
    fingerprint = fp.split()[1] if len(fp.split()) > 1 else "?"
    return Check("ssh-hostkeys", True, f"regenerated: {' '.join(k.rsplit('/', 1)[-1] for k in keys)}; "
                                       f"{keys[-1].rsplit('/', 1)[-1]} {fingerprint}")


# The EFI global variable SecureBoot: 4 bytes of attributes, then 1 (enforcing) or 0.
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def check_firmware(agent: Agent, ctx: CheckContext) -> Check:
    """The guest booted through the cell's firmware: EFI or not, and Secure Boot on exactly when asked."""
    rc, _, _ = agent.exec(["test", "-d", "/sys/firmware/efi"])
    efi = rc == 0
    want_efi = ctx.cell.firmware is not BootFirmware.BIOS
    if efi != want_efi:
        return Check("firmware", False, f"the guest {'did' if efi else 'did not'} boot through UEFI "
                                        f"(/sys/firmware/efi), but the cell is {ctx.cell.firmware}")
    if not efi:
        return Check("firmware", True, "booted through BIOS (no /sys/firmware/efi)")
    rc, out, _ = agent.exec(["od", "-An", "-tu1", SECURE_BOOT_VAR])
    values = out.split()
    sb = rc == 0 and len(values) == 5 and values[4] == "1"
    want_sb = ctx.cell.firmware is BootFirmware.SECURE_BOOT
    if sb != want_sb:
        return Check("firmware", False, f"Secure Boot is {'on' if sb else 'off'} in the guest "
                                        f"(SecureBoot variable {values or 'absent'}), the cell wants it "
                                        f"{'on' if want_sb else 'off'}")
    return Check("firmware", True, "booted through UEFI, Secure Boot " + ("enforcing (SecureBoot=1)" if sb
                                                                         else "off"))


DMI_PRODUCT = {Machine.PC: "i440FX", Machine.Q35: "Q35"}


def check_machine(agent: Agent, ctx: CheckContext) -> Check:
    _, out, _ = agent.exec(["cat", "/sys/class/dmi/id/product_name"])
    product = out.strip()
    ok = DMI_PRODUCT[ctx.cell.machine] in product
    return Check("machine", ok, f"DMI product '{product}'" + ("" if ok else f", expected {ctx.cell.machine}"))


# -- live operations: what operators do to a running guest, read back inside it -----------------

LIVE_WAIT_SECONDS = 90                 # for a change to show in the guest (TCG; seconds under KVM)


def _libvirt() -> Any:
    import libvirt
    return libvirt


def _wait(probe: Callable[[], Any], done: Callable[[Any], bool], seconds: float) -> tuple[Any, float, bool]:
    """Poll ``probe`` until ``done(value)``; (last value, seconds taken, done?)."""
    start = time.monotonic()
    while True:
        value = probe()
        if done(value):
            return value, time.monotonic() - start, True
        if time.monotonic() - start > seconds:
            return value, time.monotonic() - start, False
        time.sleep(0.25)  # each probe is one guest-exec (~0.1 s): the time measured stays within 0.3 s


def _cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        elif part:
            out.add(int(part))
    return out


def _guest_view(agent: Agent, script: str) -> str:
    """The guest's own view for a failure message: sysfs files and the kernel log's tail."""
    _, out, _ = agent.exec(["sh", "-c", script + "; echo '--- dmesg ---'; dmesg | tail -n 12"])
    return " | ".join(ln for ln in out.splitlines() if ln.strip())


def _meminfo_kib(agent: Agent) -> int:
    _, out, _ = agent.exec(["cat", "/proc/meminfo"])
    for line in out.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise BootTestFailed("no MemTotal in the guest's /proc/meminfo")


def _qemu_version() -> str:
    from ..run import tool_version
    return tool_version(["qemu-system-x86_64", "--version"]).replace("QEMU emulator version ", "")


def check_vcpu_hotplug(agent: Agent, ctx: CheckContext) -> Check:
    """`virsh setvcpus DOMAIN N --live`: the new vCPU must come online by itself (the image's udev rule)."""
    def online() -> tuple[set[int], str]:
        _, out, _ = agent.exec(["sh", "-c", "cat /sys/devices/system/cpu/online; nproc"])
        lines = out.split()
        return _cpu_list(lines[0] if lines else ""), lines[1] if len(lines) > 1 else "?"

    before, nproc_before = online()
    target = len(before) + 1
    if target > ctx.recipe.boot_test.max_vcpus:
        return Check("vcpu-hotplug", False, f"{len(before)} vCPUs online already, max_vcpus is "
                                            f"{ctx.recipe.boot_test.max_vcpus}: nothing to hot-add")
    _, possible_text, _ = agent.exec(["cat", "/sys/devices/system/cpu/possible"])
    possible = _cpu_list(possible_text)
    if len(possible) < target:
        # The kernel sizes its CPU slots at boot from the firmware's ACPI tables. Measured here: Debian 13's
        # 6.12 kernel finds none to spare in those of this host's QEMU 7.2 (possible=0-1 with 4 vCPUs
        # defined; a hot-add then logs "ACPI: Unable to map lapic to logical cpu number", and
        # possible_cpus= does not change it), while Debian 12's 6.1 kernel on the same host finds all 4.
        # No image setting can add slots, so the check says so instead of failing the image.
        return Check("vcpu-hotplug", True, f"not run: the guest's kernel found no CPU slot to hot-add into "
                                           f"(possible={possible_text.strip()}, {ctx.recipe.boot_test.max_vcpus} "
                                           "vCPUs defined): it reads none in this host's ACPI tables (QEMU "
                                           f"{_qemu_version()}); a host whose firmware offers them is needed",
                     skipped=True)
    lv = _libvirt()
    try:
        ctx.dom.setVcpusFlags(target, lv.VIR_DOMAIN_AFFECT_LIVE)
    except lv.libvirtError as exc:
        return Check("vcpu-hotplug", False, f"libvirt refused to hot-add vCPU {target}: {exc}")
    (after, nproc_after), took, ok = _wait(online, lambda v: len(v[0]) >= target, LIVE_WAIT_SECONDS)
    if not ok:
        return Check("vcpu-hotplug", False, f"vCPUs {len(before)} → {target} asked; online after {took:.0f}s: "
                     f"{sorted(after)}; guest: " + _guest_view(
                         agent, "echo present=$(cat /sys/devices/system/cpu/present) "
                                "online=$(cat /sys/devices/system/cpu/online); "
                                "grep -H . /sys/devices/system/cpu/cpu*/online"))
    return Check("vcpu-hotplug", True, f"vCPUs {len(before)} → {len(after)} online after {took:.1f}s "
                                       f"(online {sorted(after)}, nproc {nproc_before} → {nproc_after})")


def check_balloon(agent: Agent, ctx: CheckContext) -> Check:
    """Shrink the balloon target live, see MemTotal drop in the guest (and libvirt's stats agree), then
    give the memory back and see it return."""
    lv = _libvirt()
    step_kib = ctx.recipe.boot_test.balloon_mib * 1024
    full_kib = int(ctx.dom.info()[2])            # libvirt's current memory, KiB
    total0 = _meminfo_kib(agent)
    slack = 16 * 1024                            # the driver's page rounding and what it keeps
    try:
        ctx.dom.setMemoryFlags(full_kib - step_kib, lv.VIR_DOMAIN_AFFECT_LIVE)
    except lv.libvirtError as exc:
        return Check("balloon", False, f"libvirt refused the balloon target: {exc}")
    low, took_down, ok = _wait(lambda: _meminfo_kib(agent), lambda v: v <= total0 - step_kib + slack,
                               LIVE_WAIT_SECONDS)
    actual = int(ctx.dom.memoryStats().get("actual", 0))
    ctx.dom.setMemoryFlags(full_kib, lv.VIR_DOMAIN_AFFECT_LIVE)
    if not ok:
        return Check("balloon", False, f"MemTotal {total0 // 1024} MiB did not drop by "
                     f"{step_kib // 1024} MiB in {took_down:.0f}s (now {low // 1024} MiB); guest: "
                     + _guest_view(agent, "ls /sys/bus/virtio/drivers/virtio_balloon/ 2>&1"))
    if abs(actual - (full_kib - step_kib)) > slack:
        return Check("balloon", False, f"libvirt's balloon reports {actual // 1024} MiB, asked for "
                                       f"{(full_kib - step_kib) // 1024} MiB")
    back, took_up, ok = _wait(lambda: _meminfo_kib(agent), lambda v: v >= total0 - slack, LIVE_WAIT_SECONDS)
    if not ok:
        return Check("balloon", False, f"MemTotal did not grow back: {back // 1024} of {total0 // 1024} MiB "
                                       f"after {took_up:.0f}s")
    return Check("balloon", True, f"MemTotal {total0 // 1024} → {low // 1024} MiB in {took_down:.1f}s "
                                  f"(libvirt: {actual // 1024} MiB), back to {back // 1024} MiB in {took_up:.1f}s")


def _memory_blocks(agent: Agent) -> dict[str, str]:
    _, out, _ = agent.exec(["sh", "-c", "grep -H . /sys/devices/system/memory/memory*/state"])
    blocks = {}
    for line in out.splitlines():
        path, _, state = line.partition(":")
        blocks[path.split("/")[-2]] = state.strip()
    return blocks


def check_memory_hotplug(agent: Agent, ctx: CheckContext) -> Check:
    """Attach a DIMM live: MemTotal grows by its size and its memory blocks come online by themselves."""
    lv = _libvirt()
    size = ctx.recipe.boot_test.hotplug_memory_mib
    total0, blocks0 = _meminfo_kib(agent), _memory_blocks(agent)
    dimm = (f"<memory model='dimm'><target><size unit='MiB'>{size}</size><node>0</node></target></memory>")
    try:
        ctx.dom.attachDeviceFlags(dimm, lv.VIR_DOMAIN_AFFECT_LIVE)
    except lv.libvirtError as exc:
        return Check("memory-hotplug", False, f"libvirt refused to attach a {size} MiB DIMM: {exc}")
    want = total0 + size * 1024 - 8 * 1024     # the kernel keeps a little of it for its page structs
    total, took, ok = _wait(lambda: _meminfo_kib(agent), lambda v: v >= want, LIVE_WAIT_SECONDS)
    blocks = _memory_blocks(agent)
    new = {b: st for b, st in blocks.items() if b not in blocks0}
    offline = sorted(b for b, st in new.items() if st == "offline")
    if not ok or offline or not new:
        return Check("memory-hotplug", False, f"a {size} MiB DIMM: MemTotal {total0 // 1024} → {total // 1024} MiB "
                     f"after {took:.0f}s; new blocks {new or 'none'}; guest: "
                     + _guest_view(agent, "cat /sys/devices/system/memory/auto_online_blocks; cat /proc/cmdline"))
    # an online block's valid_zones names the zone it is in: Movable can be unplugged again
    _, zones_out, _ = agent.exec(["sh", "-c", " ".join(f"cat /sys/devices/system/memory/{b}/valid_zones;"
                                                       for b in sorted(new))])
    zones = sorted(set(zones_out.split()))
    return Check("memory-hotplug", True, f"a {size} MiB DIMM: MemTotal {total0 // 1024} → {total // 1024} MiB "
                                         f"in {took:.1f}s, {len(new)} new blocks online in zone "
                                         f"{'/'.join(zones) or '?'}")


def check_virtio(agent: Agent, ctx: CheckContext) -> Check:
    """The guest bound virtio drivers to the disk (the cell's bus), NIC, balloon, console and RNG."""
    # shell builtins only: a fork costs ~0.1 s of the guest's one vCPU under emulation, and `ls | grep`
    # per driver took 2.4 s of a cell
    _, out, _ = agent.exec(["sh", "-c", "cd /sys/bus/virtio/drivers && for d in *; do n=0; "
                                        'for x in "$d"/virtio*; do [ -e "$x" ] && n=$((n+1)); done; '
                                        'echo "$d $n"; done'])
    bound = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines() if len(ln.split()) == 2}
    disk_driver = {"virtio": "virtio_blk", "scsi": "virtio_scsi"}[ctx.disk_bus]
    want = (disk_driver, "virtio_net", "virtio_balloon", "virtio_console")
    missing = [d for d in want if not bound.get(d)]
    have = ", ".join(f"{d}×{n}" for d, n in sorted(bound.items()) if n)
    if missing:
        return Check("virtio", False, f"no device bound to {', '.join(missing)} (bound: {have or 'none'})")
    return Check("virtio", True, f"root disk on {disk_driver}; bound: {have}")


# The order: first what the booted image shows whatever systemd is still starting, then the live
# operations (vCPU hotplug last: a guest that hangs on one hides little else), then what the first
# boot's units must have finished: the system running (its wait starts before all of these, so the
# first boot's host-key generation, seconds under emulation, overlaps them), then the mounts and swap
# (systemd mounts /boot/efi and would activate a swap unit late in the boot: read earlier, CI once saw
# a hybrid image with only / mounted, and a swap activated late would pass unseen), machine-id, host keys.
CHECKS: tuple[CheckFn, ...] = (check_firmware, check_machine, check_fresh_mac, check_dhcp, check_packages,
                               check_virtio, check_balloon, check_memory_hotplug, check_vcpu_hotplug,
                               check_system_running, check_single_root, check_no_swap, check_machine_id,
                               check_ssh_hostkeys)
CHECK_NAMES = ("firmware", "machine", "fresh-mac", "dhcp", "packages", "virtio", "balloon", "memory-hotplug",
               "vcpu-hotplug", "multi-user", "single-root", "no-swap", "machine-id", "ssh-hostkeys")


def platform_skip(check: str, cell: Cell, accel: Accel) -> str:
    """Why the emulated platform (not the image) cannot run ``check`` in ``cell``; "" if it can."""
    if check == "vcpu-hotplug" and cell.firmware is BootFirmware.SECURE_BOOT and accel is Accel.TCG:
        # Measured here (QEMU 7.2, OVMF 2022.11, TCG), debian12 and debian13 alike: the hot-added vCPU
        # must be relocated by OVMF's SMM CPU hotplug handler, and the guest stops answering within
        # seconds. The same images online the vCPU in 2 s on bios/pc, bios/q35 and uefi/q35 (no SMM).
        return ("not run: vCPU hot-add with SMM (Secure Boot OVMF) hangs the guest under TCG emulation "
                "here; under KVM it runs")
    return ""
CHECK_OF = dict(zip(CHECK_NAMES, CHECKS, strict=True))


def boot_test(image: Path, recipe: Recipe, *, accel: AccelChoice, work: Path, name: str, logs: Path,
              reporter: Reporter, cells: tuple[Cell, ...] | None = None, image_format: str = "qcow2",
              label: str = "") -> BootTestResult:
    """Boot ``image`` (qcow2, or ``image_format``; ``label`` names it in lines, e.g. the artifact whose
    uncompressed disk it is) in each cell (default: the recipe's matrix), one after another; raise
    BootTestFailed naming every failed cell once all have run. Consoles (and a screenshot of a failed
    cell) are written to ``logs``."""
    label = label or image.name
    cells = cells if cells is not None else recipe.boot_test.cells(recipe.image.firmware)
    for cell in cells:
        firmware_files(cell.firmware)  # a missing OVMF file is named before the first boot, not mid-matrix
    buses = recipe.boot_test.disk_buses
    cell_buses = [(cell, buses[i % len(buses)]) for i, cell in enumerate(cells)]  # in turn: both buses covered
    jobs = [(f"cell {i}/{len(cells)} {cell} ({bus})", cell, bus) for i, (cell, bus) in enumerate(cell_buses, 1)]

    def one(title: str, cell: Cell, bus: str, rep: Reporter) -> CellResult:
        res = None
        with contextlib.suppress(_CellFailed), rep.step(title):
            res = boot_cell(image, recipe, cell, accel=accel, work=work, name=f"{name}-{cell.slug}",
                            image_format=image_format, label=label,
                            logs=logs, reporter=rep, disk_bus=bus)
            if not res.passed:
                raise _CellFailed  # the step shows ✗; the next cell still runs
        assert res is not None
        return res

    parallel = min(recipe.boot_test.parallel, len(jobs))
    if parallel <= 1:
        results = [one(*job, reporter) for job in jobs]
    else:
        results = _side_by_side(jobs, one, parallel, name, reporter)
    result = BootTestResult(all(c.passed for c in results), str(accel.accel), results)
    reporter.info("boot matrix: " + ", ".join(
        f"{c.cell} {'passed' if c.passed else 'FAILED'}"
        + (f" (agent {c.seconds_to_agent:.0f}s)" if c.seconds_to_agent is not None else "") for c in results))
    if not result.passed:
        failed = "; ".join(f"{c.cell}: " + ", ".join(f"{k.name}: {k.detail}" for k in c.checks if not k.ok)
                           for c in results if not c.passed)
        raise BootTestFailed(f"boot test of {label} failed in {sum(not c.passed for c in results)} of "
                             f"{len(results)} cell(s): {failed}", result=result)
    return result


def _side_by_side(jobs: list[tuple[str, Cell, str]], one: Callable[..., CellResult], parallel: int,
                  name: str, reporter: Reporter) -> list[CellResult]:
    """Boot ``parallel`` cells at a time, each guest its own domain, overlay, MAC and VARS copy, each
    reporting with its cell's tag; results in matrix order. An interrupt destroys every domain of this
    boot test (the workers' calls then fail, and each removes its overlay) before it is re-raised."""
    import concurrent.futures as cf

    from ..workspace import destroy_domains
    reporter.info(f"booting {parallel} cells at a time")
    pool = cf.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="boot-cell")
    futures = [pool.submit(one, title, cell, bus, CellReporter(reporter, str(cell))) for title, cell, bus in jobs]
    try:
        while not all(f.done() for f in futures):
            cf.wait(futures, timeout=0.5)  # in Python, so a signal is handled at once
    except BaseException:
        for f in futures:
            f.cancel()
        destroy_domains(name, reporter)
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]


def cell_spec(recipe: Recipe, cell: Cell, *, name: str, accel: Accel, overlay: Path, nvram: Path,
              console_log: Path, mac: str, disk_bus: str) -> DomainSpec:
    """The domain of one cell, defined as an operator defines a hotplug-ready guest: vCPUs below a
    maximum, memory with room for DIMMs (slots and a NUMA cell), a virtio balloon, virtio disk and NIC."""
    bt = recipe.boot_test
    loader = firmware_files(cell.firmware)[0] if cell.firmware is not BootFirmware.BIOS else None
    disk = DiskSpec(overlay, "qcow2", target="sda", bus="scsi") if disk_bus == "scsi" else DiskSpec(overlay, "qcow2")
    return DomainSpec(name=name, accel=accel, memory_mib=bt.memory_mib, vcpus=bt.vcpus, disks=(disk,),
                      console_log=console_log, mac=mac, machine=str(cell.machine), loader=loader,
                      nvram=nvram if loader else None, secure_boot=cell.firmware is BootFirmware.SECURE_BOOT,
                      max_vcpus=bt.max_vcpus, max_memory_mib=bt.memory_mib + bt.hotplug_memory_mib * MEMORY_SLOTS,
                      balloon=True)


def _run_checks(agent: Agent, ctx: CheckContext, cell: Cell, accel: AccelChoice, checks: list[Check],
                console_log: Path, reporter: Reporter) -> None:
    """Every check in ``CHECKS``' order, appended to ``checks``; stops at one that finds the guest hung or
    dead. The wait for systemd to finish the boot runs in the guest from the start."""
    bt = ctx.recipe.boot_test
    if "multi-user" not in bt.skip_checks:
        ctx = replace(ctx, system_wait=agent.start(system_wait_argv(ctx)))
    for check_name, fn in CHECK_OF.items():
        if check_name in bt.skip_checks:
            continue
        why = platform_skip(check_name, cell, accel.accel)
        if why:
            checks.append(Check(check_name, True, why, skipped=True))
            reporter.info(f"- {check_name}: {why}")
            continue
        t = time.monotonic()
        try:
            c = fn(agent, ctx)
        except BootTestFailed as exc:  # the guest hung or died during this check
            c = Check(check_name, False, f"{exc}; last console lines:\n{_console_tail(console_log, 12)}",
                      seconds=round(time.monotonic() - t, 1))
            reporter.info(f"✗ {c.name}: {c.detail}")
            checks.append(c)
            break
        c = replace(c, seconds=round(time.monotonic() - t, 1))
        mark = "-" if c.skipped else "✓" if c.ok else "✗"
        reporter.info(f"{mark} {c.name} ({c.seconds:.1f}s): {c.detail}")
        checks.append(c)


def boot_cell(image: Path, recipe: Recipe, cell: Cell, *, accel: AccelChoice, work: Path, name: str,
              logs: Path, reporter: Reporter, disk_bus: str = "virtio", image_format: str = "qcow2",
              label: str = "") -> CellResult:
    """One cell: a fresh overlay, MAC and VARS copy, the root disk on ``disk_bus``; the checks (the live
    operations last); everything but the logs removed."""
    bt = recipe.boot_test
    timeout = bt.timeout_seconds * (bt.tcg_factor if accel.accel is Accel.TCG else 1)
    overlay = work / f"{name}-overlay.qcow2"
    nvram = work / f"{name}-VARS.fd"
    console_log = logs / f"boot-console-{cell.slug}.log"
    mac = random_mac()
    start = time.monotonic()
    to_agent: float | None = None
    checks: list[Check] = []
    stalled: list[str] = []
    try:
        for attempt in range(1, bt.stall_retries + 2):
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image_format, "-b", str(image.resolve()),
                 str(overlay)], reporter=reporter, purpose="a throwaway overlay, so the artifact is never written")
            if cell.firmware is not BootFirmware.BIOS:
                # a fresh NVRAM: no boot entries, as a new cloud guest has
                shutil.copyfile(firmware_files(cell.firmware)[1], nvram)
            spec = cell_spec(recipe, cell, name=name, accel=accel.accel, overlay=overlay, nvram=nvram,
                             console_log=console_log, mac=mac, disk_bus=disk_bus)
            reporter.info(f"booting {label or image.name} [{cell}] on {accel.accel} with fresh MAC {mac} "
                          f"(timeout {timeout}s)")
            attempt_start = time.monotonic()
            deadline = attempt_start + timeout
            stall: BootStalled | None = None
            with transient_domain(spec, reporter) as dom:
                try:
                    agent = Agent(dom)
                    try:
                        wait_for_agent(dom, agent, deadline, console_log, stall_seconds=bt.stall_seconds)
                    except BootStalled as exc:
                        if attempt > bt.stall_retries:
                            raise
                        stall = exc
                    else:
                        to_agent = time.monotonic() - attempt_start
                        reporter.info(f"guest agent answered after {to_agent:.0f}s; running checks in the guest")
                        _run_checks(agent, CheckContext(recipe, mac, deadline, cell, dom, disk_bus), cell, accel,
                                    checks, console_log, reporter)
                except BootTestFailed as exc:
                    checks.append(Check("boot", False, str(exc)))
                if stall is None and not all(c.ok for c in checks) and dom.isActive():
                    screenshot(dom, logs / f"boot-screen-{cell.slug}.ppm")
            if stall is None:
                break
            # the stalled guest is destroyed (above); its console is kept, and the cell boots again
            kept = logs / f"boot-console-{cell.slug}-stalled-{attempt}.log"
            if console_log.exists():
                console_log.rename(kept)
            stalled.append(f"attempt {attempt} (MAC {mac}): {stall.summary}; console kept as {kept.name}")
            reporter.info(f"⚠ {stall.summary}: an emulation stall, not yet the image's fault; booting "
                          f"the cell again on a fresh overlay and MAC (retry {attempt} of {bt.stall_retries})")
            overlay.unlink(missing_ok=True)
            nvram.unlink(missing_ok=True)
            mac = random_mac()
    except (BootTestFailed, CommandFailed, DomainError) as exc:
        # the cell failed (libvirt refused the domain, the guest stopped or never answered): record it
        # and go on with the next cell, so one run shows the whole matrix
        checks.append(Check("boot", False, str(exc)))
    finally:
        overlay.unlink(missing_ok=True)
        nvram.unlink(missing_ok=True)
    passed = bool(checks) and all(c.ok for c in checks)
    return CellResult(str(cell), str(cell.firmware), str(cell.machine), disk_bus, passed, str(accel.accel), mac,
                      round(to_agent, 1) if to_agent is not None else None, round(time.monotonic() - start, 1),
                      checks, console_log.name, stalled)

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
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .accel import Accel, AccelChoice
from .disklayout import ESP_MOUNT, layout_for
from .domain import DiskSpec, DomainError, DomainSpec, firmware_files, random_mac, screenshot, transient_domain
from .errors import BootTestFailed, CommandFailed
from .events import Reporter
from .recipe import BootFirmware, Cell, Family, Machine, Recipe
from .run import run


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class CellResult:
    """One cell of the matrix: how it booted and what the guest said."""
    cell: str                          # "uefi/q35"
    firmware: str
    machine: str
    passed: bool
    accelerator: str
    mac: str
    seconds_to_agent: float | None     # None: the agent never answered
    seconds: float                     # the whole cell: overlay, boot, checks, teardown
    checks: list[Check]
    console_log: str                   # file name beside the artifact

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


class Agent:
    """The QEMU guest agent of a running domain."""

    def __init__(self, dom: Any) -> None:
        import libvirt_qemu
        self.dom = dom
        self._qmp = libvirt_qemu.qemuAgentCommand

    def call(self, command: str, args: dict[str, Any] | None = None, timeout: int = 10) -> Any:
        msg = {"execute": command, **({"arguments": args} if args else {})}
        return json.loads(self._qmp(self.dom, json.dumps(msg), timeout, 0))["return"]

    def exec(self, argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
        pid = self.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode("utf-8", "replace")
                err = base64.b64decode(st.get("err-data", "")).decode("utf-8", "replace")
                return int(st.get("exitcode", -1)), out, err
            time.sleep(0.5)
        raise BootTestFailed(f"in-guest command did not finish within {timeout:.0f}s: {' '.join(argv)}")


def _console_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for_agent(dom: Any, agent: Agent, deadline: float, console: Path) -> None:
    import libvirt
    while time.monotonic() < deadline:
        if not dom.isActive():
            raise BootTestFailed("the guest stopped before its agent answered; last console lines:\n"
                                 + _console_tail(console))
        try:
            agent.call("guest-ping", timeout=5)
            return
        except libvirt.libvirtError:
            time.sleep(2)
    raise BootTestFailed("the guest agent did not answer before the boot timeout; last console lines:\n"
                         + _console_tail(console))


# -- the checks, each a function of (agent, context) -> Check ------------------------------------

@dataclass(frozen=True)
class CheckContext:
    recipe: Recipe
    mac: str
    deadline: float
    cell: Cell


CheckFn = Callable[[Agent, CheckContext], Check]


def check_system_running(agent: Agent, ctx: CheckContext) -> Check:
    wait = max(10, int(ctx.deadline - time.monotonic()))
    rc, out, _ = agent.exec(["/usr/bin/timeout", str(wait), "systemctl", "is-system-running", "--wait"],
                            timeout=wait + 15)
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
    wanted = list(ctx.recipe.packages.all)
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


CHECKS: tuple[CheckFn, ...] = (check_system_running, check_firmware, check_machine, check_fresh_mac,
                               check_dhcp, check_single_root, check_no_swap, check_packages, check_machine_id,
                               check_ssh_hostkeys)
CHECK_NAMES = ("multi-user", "firmware", "machine", "fresh-mac", "dhcp", "single-root", "no-swap", "packages",
               "machine-id", "ssh-hostkeys")


def boot_test(image: Path, recipe: Recipe, *, accel: AccelChoice, work: Path, name: str, logs: Path,
              reporter: Reporter, cells: tuple[Cell, ...] | None = None) -> BootTestResult:
    """Boot ``image`` (qcow2) in each cell (default: the recipe's matrix), one after another; raise
    BootTestFailed naming every failed cell once all have run. Consoles (and a screenshot of a failed
    cell) are written to ``logs``."""
    cells = cells if cells is not None else recipe.boot_test.cells(recipe.image.firmware)
    for cell in cells:
        firmware_files(cell.firmware)  # a missing OVMF file is named before the first boot, not mid-matrix
    results = []
    for i, cell in enumerate(cells, 1):
        with reporter.step(f"cell {i}/{len(cells)} {cell}"):
            results.append(boot_cell(image, recipe, cell, accel=accel, work=work, name=f"{name}-{cell.slug}",
                                     logs=logs, reporter=reporter))
    result = BootTestResult(all(c.passed for c in results), str(accel.accel), results)
    reporter.info("boot matrix: " + ", ".join(
        f"{c.cell} {'passed' if c.passed else 'FAILED'}"
        + (f" (agent {c.seconds_to_agent:.0f}s)" if c.seconds_to_agent is not None else "") for c in results))
    if not result.passed:
        failed = "; ".join(f"{c.cell}: " + ", ".join(f"{k.name}: {k.detail}" for k in c.checks if not k.ok)
                           for c in results if not c.passed)
        raise BootTestFailed(f"boot test of {image.name} failed in {sum(not c.passed for c in results)} of "
                             f"{len(results)} cell(s): {failed}", result=result)
    return result


def boot_cell(image: Path, recipe: Recipe, cell: Cell, *, accel: AccelChoice, work: Path, name: str,
              logs: Path, reporter: Reporter) -> CellResult:
    """One cell: a fresh overlay, MAC and VARS copy; the checks; everything but the logs removed."""
    bt = recipe.boot_test
    timeout = bt.timeout_seconds * (bt.tcg_factor if accel.accel is Accel.TCG else 1)
    overlay = work / f"{name}-overlay.qcow2"
    nvram = work / f"{name}-VARS.fd"
    console_log = logs / f"boot-console-{cell.slug}.log"
    mac = random_mac()
    start = time.monotonic()
    to_agent: float | None = None
    checks: list[Check] = []
    try:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.resolve()), str(overlay)],
            reporter=reporter, purpose="a throwaway overlay, so the artifact is never written")
        loader = None
        if cell.firmware is not BootFirmware.BIOS:
            code, vars_template = firmware_files(cell.firmware)
            shutil.copyfile(vars_template, nvram)  # a fresh NVRAM: no boot entries, as a new cloud guest
            loader = code
        spec = DomainSpec(name=name, accel=accel.accel, memory_mib=bt.memory_mib, vcpus=bt.vcpus,
                          disks=(DiskSpec(overlay, "qcow2"),), console_log=console_log, mac=mac,
                          machine=str(cell.machine), loader=loader, nvram=nvram if loader else None,
                          secure_boot=cell.firmware is BootFirmware.SECURE_BOOT)
        reporter.info(f"booting {image.name} [{cell}] on {accel.accel} with fresh MAC {mac} (timeout {timeout}s)")
        deadline = start + timeout
        with transient_domain(spec, reporter) as dom:
            try:
                agent = Agent(dom)
                wait_for_agent(dom, agent, deadline, console_log)
                to_agent = time.monotonic() - start
                reporter.info(f"guest agent answered after {to_agent:.0f}s; running checks in the guest")
                ctx = CheckContext(recipe, mac, deadline, cell)
                for fn in CHECKS:
                    c = fn(agent, ctx)
                    reporter.info(f"{'✓' if c.ok else '✗'} {c.name}: {c.detail}")
                    checks.append(c)
            except BootTestFailed as exc:
                checks.append(Check("boot", False, str(exc)))
            if not all(c.ok for c in checks) and dom.isActive():
                screenshot(dom, logs / f"boot-screen-{cell.slug}.ppm")
    except (BootTestFailed, CommandFailed, DomainError) as exc:
        # the cell failed (libvirt refused the domain, the guest stopped or never answered): record it
        # and go on with the next cell, so one run shows the whole matrix
        checks.append(Check("boot", False, str(exc)))
    finally:
        overlay.unlink(missing_ok=True)
        nvram.unlink(missing_ok=True)
    passed = bool(checks) and all(c.ok for c in checks)
    return CellResult(str(cell), str(cell.firmware), str(cell.machine), passed, str(accel.accel), mac,
                      round(to_agent, 1) if to_agent is not None else None, round(time.monotonic() - start, 1),
                      checks, console_log.name)

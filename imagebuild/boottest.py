"""Boot test: the image boots as a fresh clone and checks run inside the guest.

The guest gets a throwaway qcow2 overlay (the artifact is only read, its sha256 is verified unchanged
afterwards), a virtio NIC on a fresh random MAC, and a serial console captured to a file. Checks run
through the QEMU guest agent (``guest-exec``): no password, no SSH key, nothing added to the image.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .accel import Accel, AccelChoice
from .domain import DiskSpec, DomainSpec, random_mac, transient_domain
from .errors import BootTestFailed
from .events import Reporter
from .recipe import Family, Recipe
from .run import run


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class BootTestResult:
    passed: bool
    accelerator: str
    mac: str
    seconds_to_agent: float
    checks: list[Check]

    def to_data(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        return d


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
    _, mounts, _ = agent.exec(["cat", "/proc/self/mounts"])
    block = [ln.split()[:3] for ln in mounts.splitlines() if ln.startswith("/dev/")]
    _, lsblk, _ = agent.exec(["lsblk", "-J", "-o", "NAME,TYPE,FSTYPE"])
    parts = [c for d in json.loads(lsblk).get("blockdevices", []) for c in d.get("children", []) or []
             if c.get("type") == "part"]
    mounted = sorted({m[1] for m in block})
    ok = mounted == ["/"] and len(parts) == 1
    return Check("single-root", ok, f"block-device mounts {mounted}, {len(parts)} partition(s)")


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


CHECKS: tuple[CheckFn, ...] = (check_system_running, check_fresh_mac, check_dhcp, check_single_root,
                               check_no_swap, check_packages, check_machine_id, check_ssh_hostkeys)


def boot_test(image: Path, recipe: Recipe, *, accel: AccelChoice, work: Path, name: str,
              console_log: Path, reporter: Reporter) -> BootTestResult:
    """Boot ``image`` (qcow2) as a fresh clone and run the checks inside it; raise if any fails."""
    overlay = work / f"{name}-overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.resolve()), str(overlay)],
        reporter=reporter, purpose="a throwaway overlay, so the artifact is never written")
    try:
        bt = recipe.boot_test
        timeout = bt.timeout_seconds * (bt.tcg_factor if accel.accel is Accel.TCG else 1)
        mac = random_mac()
        spec = DomainSpec(name=name, accel=accel.accel, memory_mib=bt.memory_mib, vcpus=bt.vcpus,
                          disks=(DiskSpec(overlay, "qcow2"),), console_log=console_log, mac=mac,
                          machine=recipe.image.machine_type)
        reporter.info(f"booting {image.name} on {accel.accel} with fresh MAC {mac} (timeout {timeout}s)")
        start = time.monotonic()
        deadline = start + timeout
        with transient_domain(spec, reporter) as dom:
            agent = Agent(dom)
            wait_for_agent(dom, agent, deadline, console_log)
            to_agent = time.monotonic() - start
            reporter.info(f"guest agent answered after {to_agent:.0f}s; running checks in the guest")
            ctx = CheckContext(recipe, mac, deadline)
            checks = []
            for fn in CHECKS:
                c = fn(agent, ctx)
                reporter.info(f"{'✓' if c.ok else '✗'} {c.name}: {c.detail}")
                checks.append(c)
        result = BootTestResult(all(c.ok for c in checks), str(accel.accel), mac, round(to_agent, 1), checks)
        if not result.passed:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
            raise BootTestFailed(f"boot test of {image.name} failed: {failed}")
        return result
    finally:
        overlay.unlink(missing_ok=True)

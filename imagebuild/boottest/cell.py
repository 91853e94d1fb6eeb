"""One cell of the boot matrix: a fresh clone of the image booted the way a cloud boots it, its checks run
inside, and everything but its logs removed.

A cell is a firmware on a machine type with a seed (``CellPlan``). Its clone is a throwaway qcow2 overlay
on the image (the image is only read), grown to ``boot_test.grow_gib`` for a cloud image so that / must
grow; a virtio NIC on a fresh random MAC; a fresh copy of OVMF's VARS for the UEFI cells; the seed as a
read-only CD as Nova and oVirt attach a config drive, with the guest's port 22 forwarded to a loopback
port for the SSH checks; and a serial console captured to ``boot-console-SLUG.log``. A Nova cell then
boots the same clone a second time, seed still attached. A cell that fails keeps, beside its console and
a screenshot, the guest's cloud-init.log (read through the agent) and the seed it was given.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..accel import Accel, AccelChoice
from ..disklayout import MIB, layout_for
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
from ..errors import BootTestFailed, CommandFailed, ToolMissing
from ..events import Reporter
from ..recipe import BootFirmware, Cell, Recipe, SeedKind
from ..run import run
from .agent import Agent, BootStalled, console_tail, wait_for_agent
from .checks import CheckContext, cell_checks, platform_skip, system_wait_argv
from .results import CellResult, Check
from .seeds import SeedRequest, write_seed
from .ssh import LoginWatch, SshEndpoint, free_port, make_key

SHUTDOWN_SECONDS = 180                 # for the guest to power off before its second boot (TCG)


@dataclass(frozen=True)
class CellPlan:
    """A cell as the matrix boots it: where, with which seed, the root disk on which bus."""
    cell: Cell
    seed: SeedKind
    disk_bus: str
    slug: str                          # file names: the cell's, with the seed where a cell boots twice

    def __str__(self) -> str:
        return f"{self.cell}" + (f" {self.seed}" if self.seed is not SeedKind.NONE else "")


def cell_spec(recipe: Recipe, cell: Cell, *, name: str, accel: Accel, overlay: Path, nvram: Path,
              console_log: Path, mac: str, disk_bus: str, seed_iso: Path | None = None, ssh_port: int = 0,
              uuid_: str = "") -> DomainSpec:
    """The domain of one cell, defined as an operator defines a hotplug-ready guest: vCPUs below a
    maximum, memory with room for DIMMs (slots and a NUMA cell), a virtio balloon, virtio disk and NIC;
    and a cloud's config drive: a read-only CD (IDE on i440fx, SATA on q35, as Nova and oVirt attach it)."""
    bt = recipe.boot_test
    loader = firmware_files(cell.firmware)[0] if cell.firmware is not BootFirmware.BIOS else None
    disk = DiskSpec(overlay, "qcow2", target="sda", bus="scsi") if disk_bus == "scsi" else DiskSpec(overlay, "qcow2")
    disks: tuple[DiskSpec, ...] = (disk,)
    if seed_iso is not None:
        sata = cell.machine.value == "q35"
        disks += (DiskSpec(seed_iso, "raw", target="sdz" if sata else "hdc", bus="sata" if sata else "ide",
                           readonly=True, device="cdrom"),)
    return DomainSpec(name=name, accel=accel, memory_mib=bt.memory_mib, vcpus=bt.vcpus, disks=disks,
                      console_log=console_log, mac=mac, machine=str(cell.machine), loader=loader,
                      nvram=nvram if loader else None, secure_boot=cell.firmware is BootFirmware.SECURE_BOOT,
                      max_vcpus=bt.max_vcpus, max_memory_mib=bt.memory_mib + bt.hotplug_memory_mib * MEMORY_SLOTS,
                      balloon=True, ssh_port=ssh_port, uuid=uuid_)


def _run_checks(agent: Agent, ctx: CheckContext, plan: CellPlan, accel: AccelChoice, checks: list[Check],
                console_log: Path, reporter: Reporter, *, second_boot: bool = False) -> None:
    """The cell's checks in their order, appended to ``checks``; stops at one that finds the guest hung or
    dead. The wait for systemd to finish the boot runs in the guest from the start."""
    records = cell_checks(ctx.recipe, plan.seed, second_boot=second_boot)
    if any(r.name == "multi-user" for r in records):
        ctx.system_wait = agent.start(system_wait_argv(ctx))
    for rec in records:
        why = platform_skip(rec.name, plan.cell, accel.accel)
        if why:
            checks.append(Check(rec.name, True, why, skipped=True))
            reporter.info(f"- {rec.name}: {why}")
            continue
        t = time.monotonic()
        try:
            c = rec.run(agent, ctx)
        except BootTestFailed as exc:  # the guest hung or died during this check
            c = Check(rec.name, False, f"{exc}; last console lines:\n{console_tail(console_log, 12)}",
                      seconds=round(time.monotonic() - t, 1))
            reporter.info(f"✗ {c.name}: {c.detail}")
            checks.append(c)
            break
        c = Check(c.name, c.ok, c.detail, c.skipped, round(time.monotonic() - t, 1))
        mark = "-" if c.skipped else "✓" if c.ok else "✗"
        reporter.info(f"{mark} {c.name} ({c.seconds:.1f}s): {c.detail}")
        checks.append(c)


def _keep_evidence(agent: Agent, plan: CellPlan, logs: Path, seed_iso: Path | None) -> None:
    """A failed cell's cloud-init.log (through the agent) and the seed it was given, beside its console."""
    with contextlib.suppress(BootTestFailed):
        rc, out, _ = agent.exec(["cat", "/var/log/cloud-init.log"], timeout=60)
        if rc == 0:
            (logs / f"cloud-init-{plan.slug}.log").write_text(out)
    if seed_iso is not None and seed_iso.exists():
        shutil.copyfile(seed_iso, logs / f"seed-{plan.slug}.iso")


@contextlib.contextmanager
def _watching(ssh: SshEndpoint | None, started: float, deadline: float, reporter: Reporter) -> Iterator[Any]:
    """A LoginWatch for a seeded cell's first boot (None for the others), stopped with the guest."""
    watch = LoginWatch(ssh, started, deadline, reporter).start() if ssh is not None else None
    try:
        yield watch
    finally:
        if watch is not None:
            watch.stop()


def _power_off(dom: Any, deadline: float) -> bool:
    """Shut the guest down through its agent (a clean ext4, as a cloud's reboot leaves it); True once off."""
    import libvirt
    with contextlib.suppress(libvirt.libvirtError):
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
    while time.monotonic() < deadline:
        try:
            if not dom.isActive():
                return True
        except libvirt.libvirtError:  # a transient domain is gone once it powered off
            return True
        time.sleep(1)
    return False


def _seed(recipe: Recipe, plan: CellPlan, seed_dir: Path, mac: str, instance_uuid: str,
          reporter: Reporter) -> tuple[SshEndpoint | None, SeedRequest | None, Path | None]:
    """A seeded cell's SSH endpoint (a key only its seed carries, a free loopback port), what its seed says
    and the seed's ISO; ``(None, None, None)`` for a cell without one."""
    if plan.seed is SeedKind.NONE:
        return None, None, None
    seed_dir.mkdir(parents=True, exist_ok=True)
    key, public = make_key(seed_dir, reporter)
    ssh = SshEndpoint(free_port(), key, recipe.cloud.default_user, seed_dir)
    # Nova's instance uuid is the domain's (and so the DMI system) UUID; oVirt's meta_data carries a fresh
    # one at every Initial Run; NoCloud's instance-id is any string
    iid = {SeedKind.NOVA: instance_uuid, SeedKind.OVIRT: str(uuid.uuid4())}.get(
        plan.seed, f"iid-imagebuild-{instance_uuid[:8]}")
    request = SeedRequest(plan.seed, iid, f"ib-{plan.slug}-{secrets.token_hex(2)}", public, mac,
                          recipe.cloud.default_user)
    return ssh, request, write_seed(request, seed_dir / "seed.iso", reporter=reporter)


def _fresh_clone(image: Path, image_format: str, overlay: Path, nvram: Path, recipe: Recipe, cell: Cell,
                 reporter: Reporter) -> None:
    """A throwaway overlay on the image (grown for a cloud image: / must grow into it) and, for OVMF, a
    fresh NVRAM with no boot entries, as a new cloud guest has."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", image_format, "-b", str(image.resolve()), str(overlay)]
    if recipe.cloud.enabled:
        argv.append(f"{recipe.boot_test.grow_gib}G")
    run(argv, reporter=reporter, purpose="a throwaway overlay, so the artifact is never written")
    if cell.firmware is not BootFirmware.BIOS:
        shutil.copyfile(firmware_files(cell.firmware)[1], nvram)


def _first_boot(spec: DomainSpec, ctx: CheckContext, plan: CellPlan, accel: AccelChoice, checks: list[Check],
                console_log: Path, logs: Path, seed_iso: Path | None, reporter: Reporter, *,
                may_stall: bool) -> tuple[float | None, BootStalled | None, bool]:
    """The clone booted, the agent awaited, the first boot's checks run into ``checks``; a failure's
    evidence kept; the guest powered off when a second boot is due. Returns the seconds to the agent, the
    stall when the guest stalled and ``may_stall`` (the cell may boot again), and whether the second boot
    is due (every check passed and the guest is off)."""
    bt = ctx.recipe.boot_test
    started = ctx.facts["started"]
    to_agent: float | None = None
    with transient_domain(spec, reporter) as dom, _watching(ctx.ssh, started, ctx.deadline, reporter) as watch:
        agent = Agent(dom)
        ctx.dom, ctx.login_watch = dom, watch
        try:
            try:
                wait_for_agent(dom, agent, ctx.deadline, console_log, stall_seconds=bt.stall_seconds)
            except BootStalled as exc:
                if not may_stall:
                    raise
                return None, exc, False
            to_agent = time.monotonic() - started
            reporter.info(f"guest agent answered after {to_agent:.0f}s; running checks in the guest")
            _run_checks(agent, ctx, plan, accel, checks, console_log, reporter)
        except BootTestFailed as exc:
            checks.append(Check("boot", False, str(exc)))
        passed = bool(checks) and all(c.ok for c in checks)
        if not passed and dom.isActive():
            screenshot(dom, logs / f"boot-screen-{plan.slug}.ppm")
            _keep_evidence(agent, plan, logs, seed_iso)
        if not passed or not cell_checks(ctx.recipe, plan.seed, second_boot=True):
            return to_agent, None, False
        reporter.info("powering the guest off for its second boot (seed still attached)")
        if not _power_off(dom, time.monotonic() + SHUTDOWN_SECONDS):
            checks.append(Check("second-boot", False, f"the guest did not power off within {SHUTDOWN_SECONDS}s"))
            return to_agent, None, False
    return to_agent, None, True


def boot_cell(image: Path, recipe: Recipe, plan: CellPlan, *, accel: AccelChoice, work: Path, name: str,
              logs: Path, reporter: Reporter, image_format: str = "qcow2", label: str = "",
              stop: threading.Event | None = None) -> CellResult:
    """One cell: a fresh overlay, MAC, VARS copy and seed, the root disk on the plan's bus; the checks (the
    live operations after the image's own, the cloud contract last); a Nova cell's second boot;
    everything but the logs removed. A guest that stalls (an emulation stall, ``agent.BootStalled``) is
    destroyed and the cell boots again on a fresh overlay and MAC, up to ``boot_test.stall_retries``
    times. Once ``stop`` is set (the boot test was interrupted while this cell ran beside another) no
    guest of this cell is started any more."""
    bt, cell = recipe.boot_test, plan.cell
    timeout = bt.timeout_seconds * (bt.tcg_factor if accel.accel is Accel.TCG else 1)
    overlay = work / f"{name}-overlay.qcow2"
    nvram = work / f"{name}-VARS.fd"
    seed_dir = work / f"{name}-seed"
    console_log = logs / f"boot-console-{plan.slug}.log"
    mac = random_mac()
    start = time.monotonic()
    to_agent: float | None = None
    checks: list[Check] = []
    stalled: list[str] = []
    facts: dict[str, Any] = {}
    layout = layout_for(recipe.image.firmware)
    root_bytes = (recipe.image.disk_gib * 1024 - layout.overhead_mib) * MIB
    try:
        instance_uuid = str(uuid.uuid4())
        ssh, request, seed_iso = _seed(recipe, plan, seed_dir, mac, instance_uuid, reporter)
        for attempt in range(1, bt.stall_retries + 2):
            _fresh_clone(image, image_format, overlay, nvram, recipe, cell, reporter)
            _not_stopped(stop)
            spec = cell_spec(recipe, cell, name=name, accel=accel.accel, overlay=overlay, nvram=nvram,
                             console_log=console_log, mac=mac, disk_bus=plan.disk_bus, seed_iso=seed_iso,
                             ssh_port=ssh.port if ssh else 0, uuid_=instance_uuid)
            reporter.info(f"booting {label or image.name} [{plan}] on {accel.accel} with fresh MAC {mac}"
                          + (f", {plan.seed} seed, ssh on 127.0.0.1:{ssh.port}" if ssh else "")
                          + f" (timeout {timeout}s)")
            attempt_start = time.monotonic()
            ctx = CheckContext(recipe, mac, attempt_start + timeout, cell, None, plan.disk_bus, seed=plan.seed,
                               seed_request=request, ssh=ssh, original_root_bytes=root_bytes,
                               facts={"started": attempt_start})
            to_agent, stall, second_due = _first_boot(spec, ctx, plan, accel, checks, console_log, logs, seed_iso,
                                                      reporter, may_stall=attempt <= bt.stall_retries)
            if second_due:
                _not_stopped(stop)
                _second_boot(spec, ctx, plan, accel, checks, console_log, logs, seed_iso, reporter, timeout)
            if stall is None:
                break
            # the stalled guest is destroyed (above); its console is kept, and the cell boots again
            kept = logs / f"boot-console-{plan.slug}-stalled-{attempt}.log"
            if console_log.exists():
                console_log.rename(kept)
            stalled.append(f"attempt {attempt} (MAC {mac}): {stall.summary}; console kept as {kept.name}")
            reporter.info(f"⚠ {stall.summary}: an emulation stall, not yet the image's fault; booting "
                          f"the cell again on a fresh overlay and MAC (retry {attempt} of {bt.stall_retries})")
            overlay.unlink(missing_ok=True)
            nvram.unlink(missing_ok=True)
            mac = random_mac()
        facts = {k: v for k, v in ctx.facts.items() if k != "started"}
    except (BootTestFailed, CommandFailed, DomainError, ToolMissing) as exc:
        # the cell failed (libvirt refused the domain, the guest stopped or never answered): record it
        # and go on with the next cell, so one run shows the whole matrix
        checks.append(Check("boot", False, str(exc)))
    finally:
        overlay.unlink(missing_ok=True)
        nvram.unlink(missing_ok=True)
        shutil.rmtree(seed_dir, ignore_errors=True)
    passed = bool(checks) and all(c.ok for c in checks)
    return CellResult(str(cell), str(cell.firmware), str(cell.machine), plan.disk_bus, passed, str(accel.accel), mac,
                      round(to_agent, 1) if to_agent is not None else None, round(time.monotonic() - start, 1),
                      checks, console_log.name, stalled, seed=str(plan.seed), facts=facts)


def _not_stopped(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise BootTestFailed("the boot test was interrupted before this guest started")


def _second_boot(spec: DomainSpec, ctx: CheckContext, plan: CellPlan, accel: AccelChoice, checks: list[Check],
                 console_log: Path, logs: Path, seed_iso: Path | None, reporter: Reporter, timeout: int) -> None:
    """The same clone (overlay, NVRAM, MAC, seed) booted again; its console appended to the first's."""
    first_console = console_log.read_bytes() if console_log.exists() else b""
    start = time.monotonic()
    ctx.deadline = start + timeout
    ctx.facts["started"] = start
    try:
        with transient_domain(spec, reporter) as dom:
            agent = Agent(dom)
            ctx.dom = dom
            try:
                wait_for_agent(dom, agent, ctx.deadline, console_log)
                reporter.info(f"second boot: guest agent answered after {time.monotonic() - start:.0f}s")
                _run_checks(agent, ctx, plan, accel, checks, console_log, reporter, second_boot=True)
            except BootTestFailed as exc:
                checks.append(Check("second-boot", False, str(exc)))
            if not all(c.ok for c in checks) and dom.isActive():
                _keep_evidence(agent, plan, logs, seed_iso)
    finally:
        second_console = console_log.read_bytes() if console_log.exists() else b""
        console_log.write_bytes(first_console + b"\n--- second boot ---\n" + second_console)

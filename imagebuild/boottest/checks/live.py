"""Live operations: what operators do to a running guest (hot-add a vCPU and a DIMM, balloon its memory,
freeze its filesystems for a snapshot), each read back inside the guest (docs/live-operations.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...errors import BootTestFailed
from ...run import tool_version
from ..agent import Agent
from ..results import Check
from .registry import CheckContext, CheckKind, register

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
    return tool_version(["qemu-system-x86_64", "--version"]).replace("QEMU emulator version ", "")


@register("vcpu-hotplug", "a vCPU hot-added live (virsh setvcpus --live) comes online in the guest by itself",
          order=90, kind=CheckKind.LIVE)
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


@register("balloon", "the balloon shrinks the guest's MemTotal live and gives it back", order=70, kind=CheckKind.LIVE)
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


@register("memory-hotplug", "a DIMM attached live grows MemTotal, its blocks online in ZONE_MOVABLE",
          order=80, kind=CheckKind.LIVE)
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



@register("fsfreeze", "the guest agent freezes and thaws the filesystems, as Nova and oVirt do around snapshots",
          order=300, kind=CheckKind.LIVE)
def check_fsfreeze(agent: Agent, ctx: CheckContext) -> Check:
    """guest-fsfreeze-freeze, -status, -thaw: what a quiesced snapshot needs (Glance's os_require_quiesce is
    set only when this passed). Last of all checks: nothing else runs while the guest is frozen."""
    t = time.monotonic()
    try:
        frozen = int(agent.call("guest-fsfreeze-freeze", timeout=60))
        status = agent.call("guest-fsfreeze-status")
    finally:
        thawed = int(agent.call("guest-fsfreeze-thaw", timeout=60))
    took = time.monotonic() - t
    after = agent.call("guest-fsfreeze-status")
    ok = frozen >= 1 and status == "frozen" and thawed == frozen and after == "thawed"
    return Check("fsfreeze", ok, f"froze {frozen} filesystem(s) (status {status}), thawed {thawed} "
                                 f"(status {after}) in {took:.1f}s")

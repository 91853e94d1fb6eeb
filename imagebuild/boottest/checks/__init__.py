"""The boot test's checks: small registered records, one module per concern (like the customize steps).

Each check has a kebab-case name, a one-line summary, an order (the order it runs in a cell), a kind
(``system``: what the booted image shows; ``live``: what an operator does to the running guest, read
back inside it; ``cloud``: what a cloud user gets, with a seed the cell attached), the seed kinds it
applies to, and one function ``(agent, context) -> Check``. ``invoke checks`` lists them and the README's
table is generated from them; ``boot_test.skip_checks`` names them.

The order: first what the booted image shows whatever systemd is still starting, then the live
operations (vCPU hotplug last of them: a guest that hangs on one hides little else), then what the first
boot's units must have finished: the system running (its wait starts before all of these, so the first
boot's host-key generation, seconds under emulation, overlaps them), then the mounts and swap (systemd
mounts /boot/efi and would activate a swap unit late in the boot: read earlier, CI once saw a hybrid
image with only / mounted), machine-id, host keys; then the cloud contract (cloud-init has finished by
then: its last unit is part of multi-user), and the freeze that snapshots use, last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ...accel import Accel
from ...errors import RecipeError, raise_all
from ...recipe import BootFirmware, Cell, Family, Recipe, SeedKind
from ...records import RECORD_NAME, check_record
from ..agent import Agent
from ..results import Check

CHECK_NAME = RECORD_NAME


class CheckKind(StrEnum):
    SYSTEM = "system"   # what the booted image shows
    LIVE = "live"       # an operator's live operation on the running guest, read back inside it
    CLOUD = "cloud"     # the cloud contract: cloud-init, the default user over SSH, root grown (cloud.enabled)


@dataclass
class CheckContext:
    """What a check knows of its cell. ``facts`` carries what one check hands a later one (the first boot's
    host key to the second boot) and what the manifest records beside the checks (SSH times)."""
    recipe: Recipe
    mac: str
    deadline: float
    cell: Cell
    dom: Any = None                    # the libvirt domain, for the live operations
    disk_bus: str = "virtio"
    system_wait: int | None = None     # the guest PID of `systemctl is-system-running --wait`, if started
    seed: SeedKind = SeedKind.NONE
    seed_request: Any = None           # seeds.SeedRequest the cell attached (hostname, instance id, key)
    ssh: Any = None                    # ssh.SshEndpoint: the guest's port 22 forwarded to the host
    login_watch: Any = None            # ssh.LoginWatch: when sshd answered and the key first logged in
    boot: int = 1                      # 2: the same clone booted again (second_boot checks only)
    original_root_bytes: int = 0       # the size of / in the artifact, before the cell grew the disk
    facts: dict[str, Any] = field(default_factory=dict)


CheckFn = Callable[[Agent, CheckContext], Check]


@dataclass(frozen=True)
class CheckRecord:
    name: str
    summary: str
    run: CheckFn
    order: int
    kind: CheckKind
    seeds: tuple[SeedKind, ...] = tuple(SeedKind)   # the cells it runs in, by the seed they carry
    families: tuple[Family, ...] = (Family.DEBIAN, Family.EL)
    second_boot: bool = False          # runs (only) after the same clone booted a second time


CHECKS: dict[str, CheckRecord] = {}


def register(name: str, summary: str, *, order: int, kind: CheckKind,
             seeds: tuple[SeedKind, ...] = tuple(SeedKind), families: tuple[Family, ...] = (Family.DEBIAN, Family.EL),
             second_boot: bool = False) -> Callable[[CheckFn], CheckFn]:
    def deco(fn: CheckFn) -> CheckFn:
        check_record("boot-test check", name, summary, CHECKS)
        CHECKS[name] = CheckRecord(name, summary, fn, order, kind, seeds, families, second_boot)
        return fn
    return deco


def _load_all() -> None:
    # Importing the modules registers their checks.
    from . import cloud, live, system  # noqa: F401


def all_checks() -> list[CheckRecord]:
    _load_all()
    return sorted(CHECKS.values(), key=lambda c: (c.order, c.name))


def check_names() -> tuple[str, ...]:
    return tuple(c.name for c in all_checks())


def validate_skips(recipe: Recipe) -> None:
    """``boot_test.skip_checks`` names registered checks: a RecipeError naming the key otherwise."""
    known = check_names()
    problems = [RecipeError(f"unknown check '{name}' (the checks: {', '.join(known)})",
                            file=recipe.sources[0] if recipe.sources else None, key=f"boot_test.skip_checks[{i}]")
                for i, name in enumerate(recipe.boot_test.skip_checks) if name not in known]
    if problems:
        raise_all(problems)


def cell_checks(recipe: Recipe, seed: SeedKind, *, second_boot: bool = False) -> list[CheckRecord]:
    """The checks a cell carrying ``seed`` runs (at its first boot, or its second), in order."""
    return [c for c in all_checks()
            if c.second_boot == second_boot and c.name not in recipe.boot_test.skip_checks
            and recipe.image.family in c.families and seed in c.seeds
            and (c.kind is not CheckKind.CLOUD or recipe.cloud.enabled)]


def platform_skip(check: str, cell: Cell, accel: Accel) -> str:
    """Why the emulated platform (not the image) cannot run ``check`` in ``cell``; "" if it can."""
    if check == "vcpu-hotplug" and cell.firmware is BootFirmware.SECURE_BOOT and accel is Accel.TCG:
        # Measured here (QEMU 7.2, OVMF 2022.11, TCG), debian12 and debian13 alike: the hot-added vCPU
        # must be relocated by OVMF's SMM CPU hotplug handler, and the guest stops answering within
        # seconds. The same images online the vCPU in 2 s on bios/pc, bios/q35 and uefi/q35 (no SMM).
        return ("not run: vCPU hot-add with SMM (Secure Boot OVMF) hangs the guest under TCG emulation "
                "here; under KVM it runs")
    return ""


def system_wait_argv(ctx: CheckContext) -> list[str]:
    wait = max(10, int(ctx.deadline - time.monotonic()))
    return ["/usr/bin/timeout", str(wait), "systemctl", "is-system-running", "--wait"]

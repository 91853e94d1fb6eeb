"""The boot-test checks' registry: what a check is (name, summary, order, kind, the seeds and families it
applies to, one function ``(agent, context) -> Check``), what it knows of its cell, and how a check module
registers one. The check modules import this; the package imports them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ...recipe import Cell, Family, Recipe, SeedKind
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


def system_wait_argv(ctx: CheckContext) -> list[str]:
    wait = max(10, int(ctx.deadline - time.monotonic()))
    return ["/usr/bin/timeout", str(wait), "systemctl", "is-system-running", "--wait"]

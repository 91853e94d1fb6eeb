"""What a boot test found: a check's verdict, a cell's result, the matrix's result (the manifest's
``boot_test``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    seed: str = "none"                 # the cloud-init seed the cell attached (nova, ovirt, nocloud, none)
    # what the checks measured beside their verdicts: seconds_to_ssh_banner, seconds_to_login (from
    # power-on), cloud_init_stages (each stage's seconds, from status.json), host_key (the ed25519 fingerprint)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = [asdict(c) for c in self.checks]
        return d


@dataclass
class BootTestResult:
    passed: bool
    accelerator: str
    cells: list[CellResult]
    matrix_checks: list[Check] = field(default_factory=list)  # across cells: clones made their own host keys

    def to_data(self) -> dict[str, Any]:
        return {"passed": self.passed, "accelerator": self.accelerator,
                "cells": [c.to_data() for c in self.cells], "matrix_checks": [asdict(c) for c in self.matrix_checks]}

    def cell(self, name: str) -> CellResult:
        return next(c for c in self.cells if c.cell == name)


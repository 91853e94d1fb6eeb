"""What the boot test proved, read from a manifest's cells: the firmware and machine a store may advertise
(a passed cell must have booted them), the live operations and disk buses that passed, and whether a
cloud image booted with a store's own seed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageBuildError, PublishError
from ..recipe import Recipe, SeedKind, publish_firmware

LIVE_CHECKS = ("vcpu-hotplug", "memory-hotplug", "balloon", "fsfreeze")


@dataclass(frozen=True)
class Proven:
    """What the passed boot-test cells showed, for the stores to advertise."""
    machine: str
    firmware: str                      # bios, uefi or secure-boot
    cells: tuple[str, ...]             # the passed cells
    disk_buses: tuple[str, ...]        # root disk buses a passed cell booted from
    live: tuple[str, ...]              # live operations that passed in every passed cell that ran them
    guest_agent: bool                  # a passed cell's agent answered
    matrix: tuple[str, ...]            # the passed cells with their seeds (cell_label)
    seeds: frozenset[str]              # the seed kinds of the passed cells, "none" included


def recorded_recipe(manifest_path: Path, recipe: dict[str, Any]) -> Recipe:
    try:
        return Recipe.from_json(json.dumps(recipe))
    except ImageBuildError as exc:
        raise PublishError(f"{manifest_path}: the recipe it records does not load: {exc}") from None


def seed_of(cell: dict[str, Any]) -> str:
    """The seed a manifest's cell booted with; cells from before seeded cells had none."""
    return str(cell.get("seed") or SeedKind.NONE)


def cell_label(cell: dict[str, Any]) -> str:
    """A cell as stores list it: "bios/pc+nova", or just "bios/pc" when it booted with no seed (as every
    cell did before seeded cells, so such a manifest reads as it always did)."""
    seed = seed_of(cell)
    return str(cell.get("cell")) + ("" if seed == SeedKind.NONE else f"+{seed}")


def require_seed(name: str, build_id: str, bt: Any, seed: SeedKind, store: str) -> None:
    """A cloud image goes to a store only if a cell that booted with the store's own seed passed: that
    cell proved its default user, key, hostname and growth come through the way this store hands them."""
    cells = [c for c in (bt.get("cells") if isinstance(bt, dict) else None) or [] if isinstance(c, dict)]
    mine = [c for c in cells if seed_of(c) == seed]
    if any(c.get("passed") is True for c in mine):
        return
    refusal = f"{name}: refusing to publish a cloud image to {store}: "
    if mine:
        raise PublishError(refusal + f"its boot-test cell {', '.join(cell_label(c) for c in mine)} did not pass "
                           f"in build {build_id} (its console log beside the artifact says why)")
    if not any("seed" in c for c in cells):
        raise PublishError(refusal + f"build {build_id} has no boot-test cell with the {seed} seed (it records "
                           "no seeds: a build from before seeded cells); rebuild it")
    raise PublishError(refusal + f"build {build_id} has no boot-test cell with the {seed} seed (cells: "
                       f"{', '.join(cell_label(c) for c in cells)}); add \"{seed}\" to boot_test.seeds and rebuild")


def proven_by(manifest_path: Path, parsed: Recipe, bt: Any, forced: bool) -> Proven:
    """What the recipe asks stores to use (firmware, machine), which a passed boot-test cell must have
    proven, and what else the passed cells showed (a forced publish advertises the recipe's wish)."""
    wanted = publish_firmware(parsed)
    if wanted is None:
        raise PublishError(f"{manifest_path}: publish.firmware {parsed.publish.firmware!r} cannot boot a "
                           f"{parsed.image.firmware} image")
    machine = str(parsed.image.machine_type)
    cells = bt.get("cells") if isinstance(bt, dict) else None
    good = [c for c in cells or [] if isinstance(c, dict) and c.get("passed") is True]
    passed = tuple(str(c.get("cell")) for c in good)
    want_cell = f"{wanted}/{machine}"
    if not forced and want_cell not in passed:
        if cells is None:
            raise PublishError(f"{manifest_path}: the boot test records no cells (a build from before the boot "
                               "matrix): rebuild it, so the firmware it advertises has been proven")
        raise PublishError(f"{parsed.name}: would advertise {wanted} firmware on {machine}, but no boot-test "
                           f"cell {want_cell} passed (passed: {', '.join(passed) or 'none'}); "
                           "set boot_test.matrix / publish.firmware / image.machine_type to what was tested")
    ran = [{k["name"]: k.get("ok") for k in c.get("checks", []) if isinstance(k, dict) and not k.get("skipped")}
           for c in good]
    live = tuple(name for name in LIVE_CHECKS
                 if any(name in checks for checks in ran) and all(checks.get(name, True) for checks in ran))
    return Proven(machine=machine, firmware=str(wanted), cells=passed,
                  disk_buses=tuple(dict.fromkeys(str(c.get("disk_bus") or "virtio") for c in good)),
                  live=live, guest_agent=bool(good), matrix=tuple(cell_label(c) for c in good),
                  seeds=frozenset(seed_of(c) for c in good))

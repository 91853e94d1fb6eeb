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

from ...accel import Accel
from ...errors import RecipeError, raise_all
from ...recipe import BootFirmware, Cell, Recipe, SeedKind

# Importing the check modules registers their checks.
from . import cloud, live, system  # noqa: F401
from .registry import CHECK_NAME, CHECKS, CheckContext, CheckFn, CheckKind, CheckRecord, register, system_wait_argv

__all__ = ["CHECKS", "CHECK_NAME", "CheckContext", "CheckFn", "CheckKind", "CheckRecord", "all_checks", "cell_checks",
           "check_names", "platform_skip", "register", "system_wait_argv", "validate_skips"]


def all_checks() -> list[CheckRecord]:
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

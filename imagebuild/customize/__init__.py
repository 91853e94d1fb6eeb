"""Generalization steps: small registered records, one module per concern (virt-sysprep's shape).

Each step has a kebab-case name, a one-line summary, an on-by-default flag, the image families it
applies to, optionally a ``when`` (the recipe must ask for it: the cloud steps apply only with
``cloud.enabled``), a ``run`` that changes the image (idempotent) and a ``check`` that reports what is still
wrong. After all steps ran, every check runs again on the image: a build fails if any host identity
or swap is left.
"""

from __future__ import annotations

from ..errors import CustomizeFailed, RecipeError
from ..guest import Guest
from ..recipe import Recipe

# Importing the step modules registers their steps (listed so that the order of registration is fixed).
from . import cloud, host_identity, hotplug, layout, logs, net_identity, packages, ssh_hostkeys  # noqa: F401
from .registry import STEP_NAME, STEPS, Step, StepContext, existing, register, register_removal

__all__ = ["STEP_NAME", "STEPS", "Step", "StepContext", "all_steps", "customize", "existing", "needs_network",
           "post_check", "register", "register_removal", "selected_steps"]


def all_steps() -> list[Step]:
    return sorted(STEPS.values(), key=lambda s: (s.order, s.name))


def selected_steps(recipe: Recipe, only: list[str] | None = None) -> list[Step]:
    """The steps a recipe runs: on by default, for its family, wanted by it (``when``), minus
    customize.disable."""
    steps = all_steps()
    known = {s.name for s in steps}
    for i, name in enumerate(recipe.customize.disable):
        if name not in known:
            raise RecipeError(f"unknown customize step '{name}' (known: {', '.join(sorted(known))})",
                              file=recipe.sources[0] if recipe.sources else None,
                              key=f"customize.disable[{i}]")
    chosen = [s for s in steps if s.applies_to(recipe) and s.name not in recipe.customize.disable]
    if only is not None:
        chosen = [s for s in chosen if s.name in only]
    return chosen


def needs_network(steps: list[Step], *, packages_in_place: bool = False) -> bool:
    """Whether the appliance needs its network for ``steps``. ``packages_in_place``: the install put the
    whole package set in (mmdebstrap), so the packages step only checks it (and, were one missing,
    fails saying so); the launch then skips the appliance's DHCP (~2 s under emulation)."""
    return any(s.needs_network and not (packages_in_place and s.name == "packages") for s in steps)


def customize(guest: Guest, ctx: StepContext, steps: list[Step]) -> None:
    for s in steps:
        guest.reporter.log(f"customize: {s.name}")
        try:
            s.run(guest, ctx)
        except RuntimeError as exc:  # a libguestfs call failed: say which step
            raise CustomizeFailed(f"customize step {s.name} failed: {exc}") from None


def post_check(guest: Guest, ctx: StepContext, steps: list[Step]) -> None:
    """Re-inspect the image after every step ran; fail listing all that is still wrong."""
    try:
        problems = [f"{s.name}: {p}" for s in steps for p in s.check(guest, ctx)]
    except RuntimeError as exc:
        raise CustomizeFailed(f"the post-check could not read the image: {exc}") from None
    if problems:
        raise CustomizeFailed("the image still carries host identity or breaks the layout rules "
                              "after generalization:\n  " + "\n  ".join(problems))

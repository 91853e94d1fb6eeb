"""Generalization steps: small registered records, one module per concern (virt-sysprep's shape).

Each step has a kebab-case name, a one-line summary, an on-by-default flag, the image families it
applies to, optionally a ``when`` (the recipe must ask for it: the cloud steps apply only with
``cloud.enabled``), a ``run`` that changes the image (idempotent) and a ``check`` that reports what is still
wrong. After all steps ran, every check runs again on the image: a build fails if any host identity
or swap is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import CustomizeFailed, RecipeError
from ..guest import Guest
from ..recipe import Family, Recipe
from ..records import RECORD_NAME, check_record

STEP_NAME = RECORD_NAME


@dataclass(frozen=True)
class StepContext:
    recipe: Recipe
    network: bool                       # the appliance was launched with network on
    notes: dict[str, object] = field(default_factory=dict)   # what steps report for the manifest


RunFn = Callable[[Guest, StepContext], None]
CheckFn = Callable[[Guest, StepContext], list[str]]
WhenFn = Callable[[Recipe], bool]


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    run: RunFn
    check: CheckFn
    order: int                          # lower runs first: packages before cleaning logs and caches
    default: bool = True
    families: tuple[Family, ...] = (Family.DEBIAN, Family.EL)
    needs_network: bool = False
    description: str = ""               # the long form (`invoke steps --long`, README): why, and what exactly
    when: WhenFn | None = None          # applies only to recipes for which this is true (None: every recipe)

    def applies_to(self, recipe: Recipe) -> bool:
        """On by default, for the recipe's family, and wanted by the recipe (``when``)."""
        return self.default and recipe.image.family in self.families and (self.when is None or self.when(recipe))


STEPS: dict[str, Step] = {}


def _description(fn: RunFn) -> str:
    """A step's long description: its function's docstring, else its module's first paragraph."""
    import inspect
    import sys
    doc = inspect.getdoc(fn) or inspect.getdoc(sys.modules.get(fn.__module__)) or ""
    return " ".join(doc.split("\n\n")[0].split())


def register(name: str, summary: str, *, order: int, check: CheckFn, default: bool = True,
             families: tuple[Family, ...] = (Family.DEBIAN, Family.EL),
             needs_network: bool = False, description: str = "",
             when: WhenFn | None = None) -> Callable[[RunFn], RunFn]:
    def deco(fn: RunFn) -> RunFn:
        check_record("customize step", name, summary, STEPS)
        STEPS[name] = Step(name, summary, fn, check, order, default, families, needs_network,
                           description or _description(fn), when)
        return fn
    return deco


def register_removal(name: str, summary: str, *, order: int, paths: Callable[[Guest], list[str]],
                     description: str = "", when: WhenFn | None = None) -> None:
    """A step that removes what ``paths`` finds in the image (files, symlinks or whole directories);
    its check reports whatever is still found."""
    def check(guest: Guest, ctx: StepContext) -> list[str]:
        return [f"{p} exists" for p in paths(guest)]

    def remove(guest: Guest, ctx: StepContext) -> None:
        for p in paths(guest):
            if guest.is_dir(p):
                guest.remove_tree(p)
            else:
                guest.remove(p)

    register(name, summary, order=order, check=check, when=when,
             description=description or "A removal: the post-check reports whatever of it is left.")(remove)


def existing(*candidates: str) -> Callable[[Guest], list[str]]:
    """``paths`` for :func:`register_removal`: those of fixed ``candidates`` present in the image."""
    return lambda guest: [p for p in candidates if guest.lexists(p)]


def _load_all() -> None:
    # Importing the modules registers their steps; listed here so the order of registration is fixed.
    from . import cloud, host_identity, hotplug, layout, logs, net_identity, packages, ssh_hostkeys  # noqa: F401


def all_steps() -> list[Step]:
    _load_all()
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

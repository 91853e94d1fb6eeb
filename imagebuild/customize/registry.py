"""The customize steps' registry: what a step is (name, summary, order, families, ``when``, its run and its
check) and how a step module registers one. The step modules import this; the package imports them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

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

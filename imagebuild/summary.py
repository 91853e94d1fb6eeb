"""``invoke show RECIPE`` for a person: one screen, as ``mkosi summary`` prints, rendered from the same plan
that ``--json`` prints (``plan.make_plan`` and ``stagecache.cache_status``), so the two cannot disagree.

The recipe chain, the image's shape, the package set, the customize steps, the boot matrix with the
checks each seed runs, and each cached stage with its key and whether the stage cache holds it.
"""

from __future__ import annotations

import textwrap
from typing import Any

from .recipe import Backend, Recipe

WIDTH = 100
LABEL = 12  # the width of the left column


def _row(label: str, text: str, indent: int = 2) -> list[str]:
    """``label`` in the left column, ``text`` wrapped in the right one."""
    lead = " " * indent + f"{label:<{LABEL}}"
    return textwrap.wrap(text, WIDTH, initial_indent=lead, subsequent_indent=" " * len(lead),
                         break_on_hyphens=False) or [lead.rstrip()]


def _install(recipe: Recipe) -> str:
    if recipe.install.backend is Backend.BOOTSTRAP:
        b = recipe.install.bootstrap
        return f"bootstrap: mmdebstrap {b.suite} ({b.variant}) from {b.mirror}"
    vm = recipe.install.vm
    answer = vm.template or "answer file"
    if vm.iso_url:
        return f"vm: {answer} from the ISO {vm.iso_url}" + ("" if vm.iso_sha256 else " (not pinned)")
    pinned = vm.kernel_sha256 and vm.initrd_sha256
    return f"vm: {answer} from {vm.tree_url}" + ("" if pinned else " (kernel and initrd not pinned)")


def _checks(checks: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """The checks every seed runs, then what each seed adds: the lists differ in a few names only."""
    if not checks:
        return []
    lists = list(checks.values())
    common = [c for c in lists[0] if all(c in other for other in lists[1:])]
    rows = [("every seed" if len(checks) > 1 else next(iter(checks)), common)]
    if len(checks) > 1:
        rows += [(f"+ {seed}", extra) for seed, names in checks.items()
                 if (extra := [c for c in names if c not in common])]
    return rows


def _cache(cache: dict[str, Any] | None) -> list[str]:
    if cache is None:
        return _row("cache", "an abstract recipe is not built: nothing to look up")
    lines: list[str] = []
    for reason in ("unknown", "not_cached"):
        if reason in cache:
            lines += _row("cache", str(cache[reason]))
    for stage in ("install", "artifact"):
        entry = cache.get(stage)
        if not isinstance(entry, dict):
            continue
        if entry.get("cached"):
            state = f"cached (build {entry.get('from_build')}, {entry.get('at')}" + \
                    (", boot-tested)" if entry.get("boot_test") else ")")
        else:
            state = f"not cached: {entry.get('miss') or 'no entry'}"
        lines += _row(stage, f"key {str(entry.get('key'))[:12]}  {state}", indent=4)
    return lines


def render_summary(recipe: Recipe, plan: dict[str, Any]) -> str:
    """The plan ``invoke show --json`` prints (with its ``cache``), as a page a person reads."""
    stages = {s["stage"]: s for s in plan["stages"]}
    img = recipe.image
    title = f"{recipe.name}: {recipe.description}" + (" (abstract: a base for others)" if recipe.abstract else "")
    out = [title]
    out += _row("recipe", " <- ".join(recipe.sources) or recipe.name)
    out += _row("image", f"{img.os_distro} {img.os_version} (family {img.family}), firmware {img.firmware}, "
                         f"{img.disk_gib} GiB disk, machine {img.machine_type}, qcow2 compat {img.compat}")
    out += _row("install", _install(recipe))
    pkgs = recipe.all_packages
    cloud = len(recipe.cloud.packages) if recipe.cloud.enabled else 0
    out += _row("packages", f"{len(pkgs)} (base {len(recipe.packages.base)}, extra {len(recipe.packages.extra)}, "
                            f"cloud {cloud}): {' '.join(pkgs)}")
    cz = stages.get("customize", {})
    steps = [s["name"] for s in cz.get("steps", [])]
    out += _row("customize", f"{len(steps)} steps{' (network)' if cz.get('network') else ''}: {', '.join(steps)}")
    bt = stages.get("boot-test", {})
    if not bt.get("enabled"):
        out += _row("boot test", "off")
    else:
        t = bt["timeout_seconds"]
        out += _row("boot test", f"{len(bt['matrix'])} cells, {bt['memory_mib']} MiB, {bt['vcpus']} vCPU, "
                                 f"timeout {t['kvm']} s (KVM) / {t['tcg']} s (TCG)")
        out += [f"    {c['cell']:<18}{c['seed']:<10}{c['disk_bus']}" for c in bt["matrix"]]
        for label, names in _checks(bt.get("checks", {})):
            out += _row(label, " ".join(names) or "-", indent=4)
        for seed, names in bt.get("second_boot", {}).items():
            out += _row(f"2nd {seed}", " ".join(names), indent=4)
    out += _row("stages", " -> ".join(stages))
    keyed = [s for s in plan["stages"] if s.get("key")]
    out += _row("runner", "; ".join(f"{s['stage']}: key {s['key']}"
                                    + (f", beside {s['beside']}" if s.get("beside") else "") for s in keyed))
    out += _cache(plan.get("cache"))
    return "\n".join(out)

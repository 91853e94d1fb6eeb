"""recipe → plan: what a build would run, resolved, without running anything (``invoke show``)."""

from __future__ import annotations

from typing import Any

from . import customize as cz
from .boottest import CHECK_NAMES
from .install import installer_for
from .recipe import Recipe, to_data
from .sparsify import COMPRESSION


def make_plan(recipe: Recipe) -> dict[str, Any]:
    installer = installer_for(recipe)
    steps = cz.selected_steps(recipe)
    bt = recipe.boot_test
    return {
        "recipe": to_data(recipe),
        "stages": [
            {"stage": "validate", "what": "tools, recipe, answer file and policy; no download, no VM"},
            {"stage": "install", **installer.describe(recipe)},
            {"stage": "customize", "libguestfs_launches": 1, "network": cz.needs_network(steps),
             "steps": [{"name": s.name, "summary": s.summary} for s in steps],
             "then": ["post-check of every step", "fstrim / (discard free space)"]},
            {"stage": "sparsify", "output": f"{recipe.name}.qcow2", "format": "qcow2",
             "compat": recipe.image.compat, "compression": COMPRESSION},
            {"stage": "boot-test", "enabled": bt.enabled, "memory_mib": bt.memory_mib, "vcpus": bt.vcpus,
             "timeout_seconds": {"kvm": bt.timeout_seconds, "tcg": bt.timeout_seconds * bt.tcg_factor},
             "accelerator": "KVM if a bounded probe boots a kernel under it, else TCG (decided at build)",
             "matrix": [str(c) for c in bt.cells(recipe.image.firmware)],
             "checks": list(CHECK_NAMES)},
            {"stage": "manifest", "files": [f"{recipe.name}.qcow2", "manifest.json", "SHA256SUMS",
                                            *(f"boot-console-{c.slug}.log" for c in bt.cells(recipe.image.firmware)),
                                            "build.log", "events.jsonl"]},
        ],
    }

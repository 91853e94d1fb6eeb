"""recipe → plan: what a build would run, resolved, without running anything (``invoke show``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from . import customize as cz
from . import recompress
from .boottest import cell_checks, plan_cells, validate_skips
from .cache import key_of
from .codeversion import code_version
from .events import NULL_REPORTER, Reporter
from .install.backends import installer_for
from .install.bootstrap import sources_list
from .install.media import fetch_bytes
from .recipe import Backend, Recipe, to_data
from .run import tool_versions_of
from .sparsify import COMPRESSION


def make_plan(recipe: Recipe) -> dict[str, Any]:
    installer = installer_for(recipe)
    steps = cz.selected_steps(recipe)
    validate_skips(recipe)
    plans = plan_cells(recipe)
    bt = recipe.boot_test
    declared = {s.name: {"what": s.what, "key": s.key, "stores": s.stores, **({"beside": s.beside} if s.beside else {})}
                for s in STAGES}
    return {
        "recipe": to_data(recipe),
        "stages": [{**declared.get(stage["stage"], {}), **stage} for stage in [
            {"stage": "validate", "what": "tools, recipe, answer file and policy; no download, no VM"},
            {"stage": "install", **installer.describe(recipe)},
            {"stage": "customize", "libguestfs_launches": 1,
             "network": cz.needs_network(steps, packages_in_place=installer.installs_packages),
             "steps": [{"name": s.name, "summary": s.summary} for s in steps],
             "then": ["post-check of every step", "fstrim / (discard free space)"]},
            {"stage": "sparsify", "output": f"{recipe.name}.qcow2", "format": "qcow2",
             "compat": recipe.image.compat, "compression": COMPRESSION,
             "compression_level": recompress.LEVEL},
            {"stage": "boot-test", "enabled": bt.enabled, "memory_mib": bt.memory_mib, "vcpus": bt.vcpus,
             "timeout_seconds": {"kvm": bt.timeout_seconds, "tcg": bt.timeout_seconds * bt.tcg_factor},
             "accelerator": "KVM if a bounded probe boots a kernel under it, else TCG (decided at build)",
             "matrix": [{"cell": str(p.cell), "seed": str(p.seed), "disk_bus": p.disk_bus} for p in plans],
             "checks": {str(p.seed): [c.name for c in cell_checks(recipe, p.seed)] for p in plans},
             "second_boot": {str(p.seed): [c.name for c in cell_checks(recipe, p.seed, second_boot=True)]
                             for p in plans if cell_checks(recipe, p.seed, second_boot=True)}},
            {"stage": "manifest", "files": [f"{recipe.name}.qcow2", "manifest.json", "SHA256SUMS",
                                            *(f"boot-console-{p.slug}.log" for p in plans),
                                            "build.log", "events.jsonl"]},
        ]],
    }


# -- stage keys: what determines each stage's output (the stage cache, imagebuild/cache.py) -------

# The code whose behaviour shapes each stage's output: a change to it is a new key.
STAGE_CODE = {
    "install": ("install/bootstrap.py", "install/initramfs.py", "install/initramfs_beside.py", "disklayout.py"),
    "customize": ("customize", "guest.py", "initramfs_files.py", "install/bootstrap.py", "install/hostgrub.py",
                  "install/reseal.py"),
    "artifact": ("sparsify.py", "recompress.py"),
    "boot-test": ("boottest", "domain.py"),
}


@dataclass(frozen=True)
class Stage:
    """A stage as the runner (``stages.StageRunner``) executes it and ``invoke show`` prints it."""
    name: str
    what: str                 # one line: what it does
    key: str                  # the stage-cache key that decides whether it is reused
    stores: str               # what the stage cache keeps of it
    beside: str = ""          # a stage it runs beside when both run (its work overlaps that one's)


STAGES = (
    Stage("install", "the recipe's installer fills a fresh disk (mmdebstrap, or an installer in a VM)",
          "install", "the installed disk, as qcow2 (a rebuild uses it in place, through an overlay)"),
    Stage("customize", "one libguestfs launch: generalize, boot loader, post-check, discard free space",
          "artifact", "with sparsify, the artifact (the boot loader's files under their own key)"),
    Stage("sparsify", "qemu-img compresses the disk into the qcow2 artifact", "artifact",
          "the artifact, with what the build learnt about it", beside="boot-test"),
    Stage("boot-test", "each cell of the matrix boots a fresh clone and runs its checks inside",
          "boot-test", "a passed result with its consoles, beside the artifact"),
)
CACHED_STAGES = tuple(s.name for s in STAGES)  # --rebuild / --require-cached names


def archive_digests(recipe: Recipe, reporter: Reporter = NULL_REPORTER) -> dict[str, str]:
    """sha256 of each suite's InRelease as the mirror serves it now: a security update in the archive
    makes a new install key. (Trust is not asked of these bytes: apt verifies what it installs.)"""
    out = {}
    for line in sources_list(recipe):
        _, mirror, suite, *_ = line.split()
        data = fetch_bytes(f"{mirror.rstrip('/')}/dists/{suite}/InRelease", timeout=20)
        out[suite] = hashlib.sha256(data).hexdigest()
    reporter.log("archive: " + ", ".join(f"{s} InRelease {d[:12]}" for s, d in out.items()))
    return out


def install_tools() -> dict[str, str]:
    return tool_versions_of({"mmdebstrap": ["mmdebstrap", "--version"], "mkfs.ext4": ["mke2fs", "-V"],
                             "sfdisk": ["sfdisk", "--version"], "mkfs.fat": ["mkfs.fat", "--help"]})


@dataclass(frozen=True)
class StageKeys:
    """Each cached stage's inputs and key (sha256 of the canonical JSON of the inputs)."""
    inputs: dict[str, dict[str, Any]]

    def key(self, stage: str) -> str:
        return key_of(self.inputs[stage])


def stage_keys(recipe: Recipe, steps: list[cz.Step], *, archive: dict[str, str] | None,
               qemu_img: str) -> StageKeys | None:
    """The keys of install, customize and the artifact (None: this backend is not cached, as VM installs
    are not yet: their answer file carries a freshly salted password hash). ``archive`` None: offline.

    Each stage's inputs hold the whole chain before it (``{"install": ..., "customize": ...}``), so a
    miss can name the input that changed at any depth: ``customize.recipe.disable changed``."""
    if recipe.install.backend is not Backend.BOOTSTRAP:
        return None
    install = {"recipe": {"install": to_data(recipe.install), "packages": list(recipe.all_packages),
                          "family": str(recipe.image.family), "firmware": str(recipe.image.firmware),
                          "disk_gib": recipe.image.disk_gib},
               "tools": install_tools(), "archive": archive, "code": code_version(STAGE_CODE["install"])}
    customize = {"recipe": {**to_data(recipe.customize), "packages": list(recipe.all_packages),
                            "cloud": to_data(recipe.cloud),
                            "firmware": str(recipe.image.firmware)},
                 "steps": [s.name for s in steps], "code": code_version(STAGE_CODE["customize"])}
    artifact = {"recipe": {"compat": recipe.image.compat}, "compression": COMPRESSION,
                "compression_level": recompress.LEVEL,
                "tools": {"qemu-img": qemu_img}, "code": code_version(STAGE_CODE["artifact"])}
    return StageKeys({"install": {"install": install},
                      "customize": {"install": install, "customize": customize},
                      "artifact": {"install": install, "customize": customize, "artifact": artifact}})


def boot_test_inputs(recipe: Recipe, artifact_sha256: str, accel: str) -> dict[str, Any]:
    return {"stage": "boot-test", "artifact": artifact_sha256, "boot_test": to_data(recipe.boot_test),
            "firmware": str(recipe.image.firmware), "accelerator": accel,
            "code": code_version(STAGE_CODE["boot-test"])}

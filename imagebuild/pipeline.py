"""The build, as one readable list of stages (``build``):

    validate → install → customize (generalize + boot loader + post-check + trim) → sparsify → boot-test → manifest

Each stage is declared in ``plan.STAGES`` (what it does, its cache key, what it stores, what it runs
beside) and run by ``stages.StageRunner``, which decides reuse or build, holds the key's lock, stores the
result and reports the stage. Sparsify runs beside the boot test, which boots the uncompressed disk.

Every resource a stage creates is owned by the build's ExitStack, so a failure or an interrupt at any
point releases all of it (guests, the libguestfs appliance, scratch space, half-written files) in
reverse order. Only a complete, checked result is renamed into ``output/<recipe>/``; a failed build
keeps its logs in ``output/failed/<build id>/`` and nothing else.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import customize as cz
from .accel import choose_accel
from .attest.outputs import check_signing_key, write_attestations
from .boottest import validate_skips
from .clean import clean_stale
from .content_digest import content_sha256
from .domain import firmware_files
from .errors import ImageBuildError, PreflightError
from .events import NULL_REPORTER, Reporter
from .install.backends import installer_for
from .install.bootstrap import apt_cache_dir
from .manifest import write_manifest, write_sha256sums
from .recipe import Backend, Recipe, load_recipe, to_data
from .run import require_tools, signals_raise, tool_versions_of
from .settings import current
from .stagecache import CacheOptions, StageCacheUse
from .stages import StageRunner
from .workspace import (
    Build,
    Scratch,
    create_work_dir,
    destroy_domains,
    memory_available,
    new_build_id,
    output_root,
    publish_output,
    remove_tree,
    scratch_plan,
    work_root,
)

COMMON_TOOLS = {"qemu-img": "convert, check and overlay images",
                "qemu-system-x86_64": "run guests (boot test, KVM probe, libguestfs appliance)",
                "rm": "remove scratch trees", "umount": "release leftover mounts",
                "mount": "a build's scratch space in memory (tmpfs)",
                "zstd": "read the image's initramfs (initramfs-tools' default compression) in the post-check"}
# the seeded cells of a cloud image's boot test
SEED_TOOLS = {"xorriso": "write the cloud-init seeds (config drives, NoCloud)",
              "ssh": "log in to the seeded cells as a cloud user", "ssh-keygen": "a key only a cell's seed carries"}
WORK_SPACE_GIB = 4      # root tree + working disk + compressed copy, for a ~1 GB system
OUTPUT_SPACE_GIB = 1


def validate(recipe: Recipe, reporter: Reporter = NULL_REPORTER, *, for_build: bool = False) -> None:
    """Everything checkable before any download, disk file or VM: tools, answer files, step names."""
    installer = installer_for(recipe)
    require_tools({**COMMON_TOOLS, **installer.tools(recipe)})
    validate_skips(recipe)
    if recipe.boot_test.enabled and recipe.cloud.enabled:
        require_tools(SEED_TOOLS)
    if recipe.boot_test.enabled:
        for cell in recipe.boot_test.cells(recipe.image.firmware):
            firmware_files(cell.firmware)  # OVMF for the UEFI cells: named before anything starts
    installer.validate(recipe, reporter, for_build=for_build)
    cz.selected_steps(recipe)
    if for_build:
        check_signing_key()  # a configured key that cannot sign is named before anything starts


def check_free_space(path: Path, gib: int, what: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < gib * 1024**3:
        raise PreflightError(f"{path} has {free / 1024**3:.1f} GiB free; {what} needs at least {gib} GiB "
                             f"(set IMAGEBUILD_WORK / IMAGEBUILD_OUTPUT to use another disk)")


def tool_versions() -> dict[str, str]:
    out = tool_versions_of({"qemu-img": ["qemu-img", "--version"],
                            "qemu-system-x86_64": ["qemu-system-x86_64", "--version"],
                            "mmdebstrap": ["mmdebstrap", "--version"]})
    try:
        import guestfs
        v = guestfs.GuestFS().version()
        out["libguestfs"] = f"{v['major']}.{v['minor']}.{v['release']}"
    except Exception:  # noqa: BLE001 - versions are informative only
        out["libguestfs"] = "unknown"
    try:
        import libvirt
        v = libvirt.getVersion()
        out["libvirt"] = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
    except Exception:  # noqa: BLE001
        out["libvirt"] = "unknown"
    return out


def build(recipe_name: str | Recipe, *, reporter: Reporter, run_boot_test: bool = True,
          keep_work: bool = False, cache: CacheOptions | None = None) -> Path:
    """Build ``recipe_name`` (or a recipe already resolved: ``verify --rebuild`` takes a manifest's) into
    ``output/<recipe>/``; returns that directory."""
    recipe = load_recipe(recipe_name) if isinstance(recipe_name, str) else recipe_name
    if recipe.abstract:
        raise ImageBuildError(f"recipe '{recipe.name}' is abstract (a base for others to extend); "
                              "build one that extends it")
    validate(recipe, reporter, for_build=True)
    installer = installer_for(recipe)
    steps = cz.selected_steps(recipe)
    with signals_raise(), ExitStack() as stack:
        b = _begin(recipe, steps, cache or CacheOptions(), reporter, stack, keep_work)
        run = StageRunner(b, installer, steps, boot_test=run_boot_test)
        if not run.reused_artifact():   # else nothing that shapes the image changed: all three reused
            run.install()               # or the cached install, through an overlay
            run.customize()             # one libguestfs launch: generalize, boot loader, post-check, trim
            run.sparsify()              # beside the boot test when there is one
        run.boot_test()                 # or its cached result for this very artifact
        _finish(b, run, steps)          # manifest and SHA256SUMS; renamed into output/<recipe>/
        return b.output_dir


def _begin(recipe: Recipe, steps: list[cz.Step], opts: CacheOptions, reporter: Reporter, stack: ExitStack,
           keep_work: bool) -> Build:
    """Before any stage: stale leftovers removed, free space checked, the stage keys computed, the work
    and staging dirs made (each released by ``stack``), the log attached, the accelerator chosen."""
    # what the build writes must not depend on who runs it: every file and every program it starts gets
    # the same umask (the user's comes back at the end)
    stack.callback(os.umask, os.umask(0o022))
    clean_stale(reporter)
    scratch = scratch_plan(recipe.image.disk_gib, setting=current().work_tmpfs, keep_work=keep_work,
                           available=memory_available())
    if not scratch.tmpfs_bytes:
        check_free_space(work_root(), WORK_SPACE_GIB, "the build's scratch space")
    check_free_space(output_root(), OUTPUT_SPACE_GIB, "the output")
    sc = StageCacheUse.open(recipe, steps, opts, reporter)
    build_id = new_build_id(recipe.name)
    sc.build_id = build_id
    staging = output_root() / f".tmp-{build_id}"
    staging.mkdir()
    stack.callback(_keep_logs_on_failure, staging, build_id)
    reporter.attach(staging / "build.log", staging / "events.jsonl")
    stack.callback(reporter.close)
    work = create_work_dir(build_id, scratch, reporter)
    if not keep_work:
        stack.callback(remove_tree, work, reporter)
    if scratch.tmpfs_bytes and not os.path.ismount(work):
        scratch = Scratch(None, "the tmpfs could not be mounted: build.log says why")
        check_free_space(work_root(), WORK_SPACE_GIB, "the build's scratch space")
    reporter.info(f"scratch space: {work} on {scratch.where} ({scratch.reason})")
    b = Build(recipe=recipe, build_id=build_id, work=work, output_dir=output_root() / recipe.name,
              staging=staging, reporter=reporter, stack=stack, stage_cache=sc)
    stack.push(_domains_destroyed_on_failure(b))
    b.notes["scratch"] = scratch.where
    b.notes["started"], b.notes["t0"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
    reporter.info(f"build {build_id}: recipe {recipe.name} ({' <- '.join(Path(s).stem for s in recipe.sources)})")
    b.accel = choose_accel(reporter)
    reporter.info(f"accelerator: {b.accel.accel} ({b.accel.reason})")
    return b


def _finish(b: Build, run: StageRunner, steps: list[cz.Step]) -> None:
    """The manifest (with each stage's time and cache record), SHA256SUMS, the SBOMs and the signed
    statements (``attest``) beside the artifact, then the staging dir renamed into ``output/<recipe>/``."""
    assert b.accel is not None and run.info is not None
    reporter, t0 = b.reporter, b.notes["t0"]
    sc = b.stage_cache
    info = run.info
    if not info.content_sha256:  # an artifact cached before content digests were recorded
        info = replace(info, content_sha256=content_sha256(run.artifact, "qcow2"))
    derived: dict[str, Any] = {k: b.inputs[k] for k in ("seed", "source_date_epoch") if k in b.inputs}
    manifest = {
        "build_id": b.build_id, "started": b.notes["started"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": to_data(b.recipe), "artifact": to_data(info), "boot_test": run.boot,
        "accelerator": str(b.accel.accel), "accelerator_reason": b.accel.reason,
        "scratch": b.notes["scratch"],
        "stages": dict(reporter.stage_seconds), "cache": sc.record,
        "stages_beside": run.stages_beside,
        # seconds from the build's start: its end, and when the artifact was complete (the
        # benchmark's "build without its boot test")
        "timeline": {"artifact_ready": round(run.artifact_ready - t0, 1) if run.artifact_ready else None,
                     "end": round(time.monotonic() - t0, 1)},
        "inputs": b.inputs, "tools": tool_versions(),
        # what the image's identifiers and times were derived from (reproducible.py; bootstrap installs)
        **derived,
        "customize_steps": [s.name for s in steps],
    }
    write_manifest(b.staging, manifest)
    write_sha256sums(b.staging, {b.artifact_name: info.sha256, "manifest.json": None})
    write_attestations(b.staging, manifest, artifact=run.artifact, content_sha256=info.content_sha256,
                       dpkg_status=run.dpkg_status.read_text() if run.dpkg_status else None,
                       key=check_signing_key(), reporter=reporter,
                       deb_cache=apt_cache_dir(b.recipe) if b.recipe.install.backend is Backend.BOOTSTRAP else None)
    reporter.info("stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in reporter.stage_seconds.items())
                  + f" ({time.monotonic() - t0:.0f}s in all"
                  + ("; sparsify beside the boot test)" if manifest["stages_beside"] else ")"))
    reporter.close()
    publish_output(b.staging, b.output_dir, b.build_id)


def _domains_destroyed_on_failure(b: Build) -> Any:
    """An exit callback: on failure or interrupt, no domain of this build outlives it (each guest is
    destroyed where it is started; this also covers one started by libvirt as the interrupt came)."""
    def on_exit(exc_type: Any, _exc: Any, _tb: Any) -> bool:
        if exc_type is not None:
            for name in destroy_domains(b.domain_prefix, b.reporter):
                b.reporter.log(f"libvirt: destroyed {name}, left running by the failed build")
        return False
    return on_exit


def _keep_logs_on_failure(staging: Path, build_id: str) -> None:
    """On failure keep the logs (never an artifact) where the user can read them."""
    if not staging.exists():
        return  # renamed into place: success
    failed = output_root() / "failed" / build_id
    failed.mkdir(parents=True, exist_ok=True)
    for f in staging.iterdir():
        if f.is_file() and f.suffix != ".qcow2" and not f.name.endswith(".partial"):
            shutil.move(str(f), failed / f.name)  # logs, consoles, screenshots: never an image
    shutil.rmtree(staging, ignore_errors=True)


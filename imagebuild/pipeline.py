"""The build, as one readable list of stages:

    validate → install → customize (generalize + boot loader + post-check + trim) → sparsify → boot-test → manifest

(sparsify runs beside the boot test, which boots the uncompressed disk: ``_compress_beside_boot_test``)

Every resource a stage creates is owned by the build's ExitStack, so a failure or an interrupt at any
point releases all of it (guests, the libguestfs appliance, scratch space, half-written files) in
reverse order. Only a complete, checked result is renamed into ``output/<recipe>/``; a failed build
keeps its logs in ``output/failed/<build id>/`` and nothing else.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import customize as cz
from . import recompress
from .accel import choose_accel
from .appliance import ApplianceAhead, open_guest
from .boottest import BootTestResult, boot_test, plan_cells, validate_skips
from .clean import clean_stale
from .customize.packages import installed_packages
from .digest import sha256_file
from .disklayout import ESP_MOUNT
from .domain import firmware_files
from .errors import BootTestFailed, ImageBuildError, PreflightError
from .events import NULL_REPORTER, CellReporter, Reporter
from .install.backends import installer_for
from .manifest import write_manifest, write_sha256sums
from .recipe import Recipe, load_recipe, to_data
from .run import require_tools, signals_raise, tool_versions_of
from .sparsify import ArtifactInfo, CompressBeside, compress
from .stagecache import CacheOptions, StageCacheUse
from .workspace import (
    Build,
    create_work_dir,
    destroy_domains,
    new_build_id,
    output_root,
    publish_output,
    remove_tree,
    work_root,
)

COMMON_TOOLS = {"qemu-img": "convert, check and overlay images",
                "qemu-system-x86_64": "run guests (boot test, KVM probe, libguestfs appliance)",
                "rm": "remove scratch trees", "umount": "release leftover mounts",
                "lsinitramfs": "check the image's initramfs holds the virtio drivers (initramfs-tools)"}
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


def build(recipe_name: str, *, reporter: Reporter, run_boot_test: bool = True,
          keep_work: bool = False, cache: CacheOptions | None = None) -> Path:
    """Build ``recipe_name`` into ``output/<recipe>/``; returns that directory."""
    opts = cache or CacheOptions()
    recipe = load_recipe(recipe_name)
    if recipe.abstract:
        raise ImageBuildError(f"recipe '{recipe.name}' is abstract (a base for others to extend); "
                              "build one that extends it")
    validate(recipe, reporter, for_build=True)
    installer = installer_for(recipe)
    steps = cz.selected_steps(recipe)
    with signals_raise(), ExitStack() as stack:
        clean_stale(reporter)
        check_free_space(work_root(), WORK_SPACE_GIB, "the build's scratch space")
        check_free_space(output_root(), OUTPUT_SPACE_GIB, "the output")
        sc = StageCacheUse.open(recipe, steps, opts, reporter)
        build_id = new_build_id(recipe.name)
        sc.build_id = build_id
        work = create_work_dir(build_id)
        if not keep_work:
            stack.callback(remove_tree, work, reporter)
        staging = output_root() / f".tmp-{build_id}"
        staging.mkdir()
        stack.callback(_keep_logs_on_failure, staging, build_id)
        reporter.attach(staging / "build.log", staging / "events.jsonl")
        stack.callback(reporter.close)
        b = Build(recipe=recipe, build_id=build_id, work=work, output_dir=output_root() / recipe.name,
                  staging=staging, reporter=reporter, stack=stack, stage_cache=sc)
        stack.push(_domains_destroyed_on_failure(b))
        started, t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
        reporter.info(f"build {build_id}: recipe {recipe.name} ({' <- '.join(Path(s).stem for s in recipe.sources)})")
        b.accel = choose_accel(reporter)
        reporter.info(f"accelerator: {b.accel.accel} ({b.accel.reason})")
        artifact = staging / b.artifact_name

        boot: dict[str, Any] | None = None
        artifact_ready: float | None = None    # time.monotonic() when the artifact was complete
        beside_boot_test = False
        hit = sc.reused_artifact(artifact)
        if hit is not None:  # nothing that shapes the image changed: install, customize, sparsify reused
            info, b.inputs = hit
            for stage in ("install", "customize", "sparsify"):
                with reporter.step(stage, stage=True):
                    reporter.info(sc.line(stage))
        else:
            # the key's lock is held from lookup to store: a second build of the same key waits, then reuses
            ahead: ApplianceAhead | None = None
            reuse: recompress.EarlierIndex | None = None
            beside_boot_test = recipe.boot_test.enabled and run_boot_test
            with reporter.step("install", stage=True), sc.making("install"):
                pending = sc.reusable_install(b)
                if pending is not None and b.disk is not None:  # the appliance boots while the digest is checked
                    ahead = _launch_ahead(b, installer, b.disk, b.disk_format, steps, host_writes=False)
                    if not pending.confirm():
                        ahead.close()
                        ahead = None
                    elif not beside_boot_test and (earlier := sc.earlier_artifact(b)) is not None:
                        # its clusters decompressed and hashed while the appliance boots (a core is free)
                        reuse = recompress.EarlierIndex(earlier)
                if not b.disk_from_cache:
                    disk = installer.disk_ahead(b)
                    ahead = _launch_ahead(b, installer, disk, "raw", steps) if disk is not None else None
                    installer.install(b)
                    sc.store_install(b)
            with reporter.step("customize", stage=True):
                _customize(b, installer, steps, ahead)
            assert b.disk is not None
            if beside_boot_test:
                info, boot, artifact_ready = _compress_beside_boot_test(b, sc, artifact, steps)
            else:
                with reporter.step("sparsify", stage=True):
                    info = _compressed(b, artifact, compress(b.disk, b.disk_format, artifact,
                                                             compat=recipe.image.compat, reporter=reporter,
                                                             reuse=reuse))
                    sc.store_artifact(b, artifact, info, steps)
                artifact_ready = time.monotonic()
        if recipe.boot_test.enabled and run_boot_test and boot is None:  # the artifact came from the cache
            with reporter.step("boot-test", stage=True):
                boot = sc.reused_boot_test(info, str(b.accel.accel), staging)
                if boot is None:
                    boot = _boot_test(b, artifact, "qcow2", artifact.name)
                    if sha256_file(artifact) != info.sha256:
                        raise ImageBuildError("the artifact changed during the boot test (it must stay read-only)")
                    sc.store_boot_test(boot, staging)
        manifest = {
            "build_id": build_id, "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "recipe": to_data(recipe), "artifact": to_data(info), "boot_test": boot,
            "accelerator": str(b.accel.accel), "accelerator_reason": b.accel.reason,
            "stages": dict(reporter.stage_seconds), "cache": sc.record,
            "stages_beside": {"sparsify": "boot-test"} if beside_boot_test else {},
            # seconds from the build's start: its end, and when the artifact was complete (the
            # benchmark's "build without its boot test")
            "timeline": {"artifact_ready": round(artifact_ready - t0, 1) if artifact_ready else None,
                         "end": round(time.monotonic() - t0, 1)},
            "inputs": b.inputs, "tools": tool_versions(),
            "customize_steps": [s.name for s in steps],
        }
        write_manifest(staging, manifest)
        write_sha256sums(staging, {b.artifact_name: info.sha256, "manifest.json": None})
        reporter.info("stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in reporter.stage_seconds.items())
                      + f" ({time.monotonic() - t0:.0f}s in all"
                      + ("; sparsify beside the boot test)" if manifest["stages_beside"] else ")"))
        reporter.close()
        publish_output(staging, b.output_dir, build_id)
        return b.output_dir


def _compressed(b: Build, artifact: Path, info: ArtifactInfo) -> ArtifactInfo:
    assert b.disk is not None
    b.disk.unlink()
    b.reporter.info(f"{artifact.name}: {info.file_size / 2**20:.0f} MiB (virtual {info.virtual_size / 2**30:.0f} GiB)")
    return info


def _boot_test(b: Build, image: Path, fmt: str, label: str) -> dict[str, Any]:
    assert b.accel is not None
    recipe = b.recipe
    b.reporter.info("boot matrix: " + ", ".join(map(str, plan_cells(recipe))))
    try:
        result = boot_test(image, recipe, accel=b.accel, work=b.work, name=f"{b.domain_prefix}-boot",
                           logs=b.staging, reporter=b.reporter, image_format=fmt, label=label)
    except BootTestFailed as exc:
        if isinstance(exc.result, BootTestResult):  # a failed build keeps every cell's result
            (b.staging / "boot-test.json").write_text(json.dumps(exc.result.to_data(), indent=2))
        raise
    return result.to_data()


def _compress_beside_boot_test(b: Build, sc: StageCacheUse, artifact: Path,
                               steps: list[cz.Step]) -> tuple[ArtifactInfo, dict[str, Any], float | None]:
    """The boot test boots the finished, uncompressed disk (through each cell's overlay) while
    ``qemu-img convert`` compresses the same disk beside it; ``qemu-img compare`` then proves the
    artifact holds what booted. A fresh artifact has no boot-test result in the cache, so nothing is
    looked up first. A failed or interrupted boot test stops the compression. Also returns when the
    artifact was ready (``time.monotonic()``)."""
    assert b.disk is not None and b.accel is not None
    rep = b.reporter
    rep.stage_seconds["sparsify"] = 0.0  # the stages keep their order in the manifest
    beside = CompressBeside(b.disk, b.disk_format, artifact, compat=b.recipe.image.compat,
                            reporter=CellReporter(rep, "sparsify"))
    b.stack.callback(beside.stop)
    with rep.step("boot-test", stage=True):
        rep.info(f"booting the uncompressed disk while it is compressed into {artifact.name} beside the boot test")
        boot = _boot_test(b, b.disk, b.disk_format, f"{artifact.name} (uncompressed)")
        rep.info("waiting for the compression" if beside.info is None and beside.error is None else
                 "the compression finished during the boot test")
        info = beside.result()
    rep.stage_seconds["sparsify"] = round(beside.seconds, 2)
    _compressed(b, artifact, info)
    sc.store_artifact(b, artifact, info, steps)
    sc.reused_boot_test(info, str(b.accel.accel), b.staging)  # a fresh artifact: records why the test ran
    sc.store_boot_test(boot, b.staging)
    return info, boot, beside.finished_at


def _launch_ahead(b: Build, installer: Any, disk: Path, fmt: str, steps: list[cz.Step], *,
                  host_writes: bool = True) -> ApplianceAhead:
    """Boot the libguestfs appliance on ``disk`` while other work goes on: the install filling it
    (20-30 s of emulated boot hidden behind mmdebstrap), or the check of a cached install's digest
    (``host_writes=False``: the overlay on it is written by nobody until the appliance takes it, so
    what the appliance's kernel read at boot needs no flushing)."""
    assert b.accel is not None
    network = cz.needs_network(steps, packages_in_place=installer.installs_packages)
    b.reporter.info(f"launching libguestfs ahead (network {'on' if network else 'off'})")
    ahead = ApplianceAhead(disk, fmt, accel=b.accel.accel, reporter=b.reporter, network=network,
                           firmware=b.recipe.image.firmware, host_writes=host_writes)
    b.stack.callback(ahead.close)  # a failed or interrupted install stops it; a no-op once customize took it
    return ahead


def _customize(b: Build, installer: Any, steps: list[cz.Step], ahead: ApplianceAhead | None = None) -> None:
    """One libguestfs launch serves the installer's finishing work, every step, the post-check and the
    discard of free space (each launch costs 20-30 s under TCG; ``ahead`` has it made during the install,
    or while a cached install's digest is checked)."""
    assert b.disk is not None and b.accel is not None
    network = cz.needs_network(steps, packages_in_place=installer.installs_packages)
    rep = b.reporter
    if ahead is None:
        rep.info(f"launching libguestfs (network {'on' if network else 'off'})")
    with open_guest(b.disk, b.disk_format, accel=b.accel.accel, reporter=rep, network=network,
                    firmware=b.recipe.image.firmware, ahead=ahead, layout_known=b.disk_from_cache) as guest:
        with rep.step(f"finalize {installer.backend} install"):
            installer.finalize(guest, b)
        ctx = cz.StepContext(b.recipe, network)
        with rep.step(f"generalize ({len(steps)} steps)"):
            cz.customize(guest, ctx, steps)
        with rep.step("boot loader configuration"):
            installer.boot_config(guest, b)
        with rep.step("post-check"):
            cz.post_check(guest, ctx, steps)
        b.inputs["packages"] = ctx.notes.get("packages") or installed_packages(guest, b.recipe.image.family)
        with rep.step("discard free space"):
            guest.call("fstrim", "/")
            if guest.esp_device:
                guest.call("fstrim", ESP_MOUNT)


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


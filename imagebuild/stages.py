"""The stage runner: each stage of ``plan.STAGES`` run in order, reused from the stage cache or built.

The runner owns what the stages share, so ``pipeline.build`` reads as the stage list:

- **reuse or build.** It asks the stage cache (``stagecache.StageCacheUse``) whether a stage's key is held;
  a reused stage says ``reused (key …, from build X at T)``, a built one ``built (miss: what changed)``,
  and the manifest records the same.
- **the key's lock** is held from lookup to store, so a second build of the same key waits, then reuses.
- **store** once a stage's output is complete and checked.
- **overlap.** ``sparsify`` runs beside ``boot-test`` when both run (the cells boot the uncompressed disk
  through their overlays while ``qemu-img`` compresses it); the libguestfs appliance boots during the
  install, or while a cached install's digest is checked; an artifact compressed on the same installed
  disk lends its unchanged clusters.
- **report.** Each stage is a reporter stage (its line, its time in the manifest).

A failure or an interrupt anywhere releases what a stage started (the appliance, the compression, the
cells' guests) through the build's ExitStack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import customize as cz
from . import recompress
from .appliance import ApplianceAhead, open_guest
from .boottest import BootTestResult, boot_test, plan_cells
from .customize.packages import installed_packages
from .digest import sha256_file
from .disklayout import ESP_MOUNT
from .errors import BootTestFailed, ImageBuildError
from .events import CellReporter
from .recipe import Family
from .sparsify import ArtifactInfo, CompressBeside, compress
from .stagecache import StageCacheUse
from .workspace import Build

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_STATUS_FILE = "dpkg-status"       # its copy in the work dir and beside a cached artifact


class StageRunner:
    """Runs one build's stages; holds what they hand on (the artifact's info, the boot-test result)."""

    def __init__(self, b: Build, installer: Any, steps: list[cz.Step], *, boot_test: bool) -> None:
        assert b.accel is not None and isinstance(b.stage_cache, StageCacheUse)
        self.b, self.installer, self.steps = b, installer, steps
        self.sc: StageCacheUse = b.stage_cache
        self.boot_wanted = b.recipe.boot_test.enabled and boot_test
        self.artifact = b.staging / b.artifact_name
        self.info: ArtifactInfo | None = None
        self.boot: dict[str, Any] | None = None
        self.artifact_ready: float | None = None   # time.monotonic() when the artifact was complete
        self.beside: CompressBeside | None = None   # sparsify running beside the boot test
        self._ahead: ApplianceAhead | None = None   # the appliance booting for customize
        self._earlier: recompress.EarlierIndex | None = None
        self.dpkg_status: Path | None = None       # the image's package database, for its SBOM

    @property
    def stages_beside(self) -> dict[str, str]:
        return {"sparsify": "boot-test"} if self.beside is not None else {}

    # -- the artifact whole ------------------------------------------------------------------------------
    def reused_artifact(self) -> bool:
        """Nothing that shapes the image changed: install, customize and sparsify are all reused at once."""
        hit = self.sc.reused_artifact(self.artifact)
        if hit is None:
            return False
        self.info, self.b.inputs = hit
        entry = self.sc.artifact_entry
        if entry is not None and entry.file(DPKG_STATUS_FILE).is_file():
            self.dpkg_status = entry.file(DPKG_STATUS_FILE)
        for stage in ("install", "customize", "sparsify"):
            with self.b.reporter.step(stage, stage=True):
                self.b.reporter.info(self.sc.line(stage))
        return True

    # -- install -------------------------------------------------------------------------------------------
    def install(self) -> None:
        """The cached install through an overlay (the appliance boots while its digest is checked), or
        the installer run (the appliance boots beside it on the disk it fills)."""
        b, sc = self.b, self.sc
        with b.reporter.step("install", stage=True), sc.making("install"):
            pending = sc.reusable_install(b)
            if pending is not None and b.disk is not None:
                self._ahead = self._launch_ahead(b.disk, b.disk_format, host_writes=False)
                if not pending.confirm():
                    self._ahead.close()
                    self._ahead = None
                elif not self.boot_wanted and (earlier := sc.earlier_artifact(b)) is not None:
                    # its clusters decompressed and hashed while the appliance boots (a core is free)
                    self._earlier = recompress.EarlierIndex(earlier)
            if not b.disk_from_cache:
                disk = self.installer.disk_ahead(b)
                self._ahead = self._launch_ahead(disk, "raw") if disk is not None else None
                self.installer.install(b)
                sc.store_install(b)

    def _launch_ahead(self, disk: Path, fmt: str, *, host_writes: bool = True) -> ApplianceAhead:
        """Boot the libguestfs appliance on ``disk`` while other work goes on: the install filling it
        (20-30 s of emulated boot hidden behind mmdebstrap), or the check of a cached install's digest
        (``host_writes=False``: the overlay on it is written by nobody until the appliance takes it, so
        what the appliance's kernel read at boot needs no flushing)."""
        b = self.b
        assert b.accel is not None
        network = cz.needs_network(self.steps, packages_in_place=self.installer.installs_packages)
        b.reporter.info(f"launching libguestfs ahead (network {'on' if network else 'off'})")
        ahead = ApplianceAhead(disk, fmt, accel=b.accel.accel, reporter=b.reporter, network=network,
                               firmware=b.recipe.image.firmware, host_writes=host_writes)
        b.stack.callback(ahead.close)  # a failed or interrupted install stops it; a no-op once customize took it
        return ahead

    # -- customize -----------------------------------------------------------------------------------------
    def customize(self) -> None:
        """One libguestfs launch serves the installer's finishing work, every step, the post-check and the
        discard of free space (each launch costs 20-30 s under TCG; the appliance was launched ahead
        during the install, or while a cached install's digest was checked)."""
        b, installer, steps = self.b, self.installer, self.steps
        assert b.disk is not None and b.accel is not None
        network = cz.needs_network(steps, packages_in_place=installer.installs_packages)
        rep = b.reporter
        with rep.step("customize", stage=True):
            if self._ahead is None:
                rep.info(f"launching libguestfs (network {'on' if network else 'off'})")
            with open_guest(b.disk, b.disk_format, accel=b.accel.accel, reporter=rep, network=network,
                            firmware=b.recipe.image.firmware, ahead=self._ahead,
                            layout_known=b.disk_from_cache) as guest:
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
                if b.recipe.image.family is Family.DEBIAN and guest.is_file(DPKG_STATUS):
                    self.dpkg_status = b.work / DPKG_STATUS_FILE
                    self.dpkg_status.write_bytes(guest.read_bytes(DPKG_STATUS))
                with rep.step("discard free space"):
                    guest.call("fstrim", "/")
                    if guest.esp_device:
                        guest.call("fstrim", ESP_MOUNT)
            installer.seal(b)  # each filesystem written once more from its tree: the same inputs, the same bytes

    # -- sparsify ------------------------------------------------------------------------------------------
    def sparsify(self) -> None:
        """Compress the disk into the artifact, and store it. With a boot test to run, the compression
        starts here and runs beside it (``boot_test`` waits for it and stores both)."""
        b = self.b
        assert b.disk is not None
        if self.boot_wanted:
            b.reporter.stage_seconds["sparsify"] = 0.0  # the stages keep their order in the manifest
            self.beside = CompressBeside(b.disk, b.disk_format, self.artifact, compat=b.recipe.image.compat,
                                         reporter=CellReporter(b.reporter, "sparsify"))
            b.stack.callback(self.beside.stop)  # a failed or interrupted boot test stops the compression
            return
        with b.reporter.step("sparsify", stage=True):
            info = compress(b.disk, b.disk_format, self.artifact, compat=b.recipe.image.compat,
                            reporter=b.reporter, reuse=self._earlier)
            self._compressed(info)
            self.sc.store_artifact(b, self.artifact, info, self.steps, self._beside_artifact())
        self.artifact_ready = time.monotonic()

    def _beside_artifact(self) -> dict[str, Path]:
        return {DPKG_STATUS_FILE: self.dpkg_status} if self.dpkg_status is not None else {}

    def _compressed(self, info: ArtifactInfo) -> None:
        b = self.b
        assert b.disk is not None
        b.disk.unlink()
        b.reporter.info(f"{self.artifact.name}: {info.file_size / 2**20:.0f} MiB "
                        f"(virtual {info.virtual_size / 2**30:.0f} GiB)")
        self.info = info

    # -- boot test -----------------------------------------------------------------------------------------
    def boot_test(self) -> None:
        """Beside the compression: boot the uncompressed disk, then wait for the artifact (``qemu-img
        compare`` proves it holds what booted) and store both. Otherwise: the cached result for this
        very artifact, or the artifact booted (and proven unchanged by it)."""
        if not self.boot_wanted:
            return
        b, sc, rep = self.b, self.sc, self.b.reporter
        with rep.step("boot-test", stage=True):
            if self.beside is not None:
                assert b.disk is not None
                rep.info(f"booting the uncompressed disk while it is compressed into {self.artifact.name} "
                         "beside the boot test")
                self.boot = self._boot(b.disk, b.disk_format, f"{self.artifact.name} (uncompressed)")
                rep.info("waiting for the compression" if self.beside.info is None and self.beside.error is None
                         else "the compression finished during the boot test")
                info = self.beside.result()
            else:
                assert self.info is not None
                self.boot = sc.reused_boot_test(self.info, str(b.accel.accel if b.accel else ""), b.staging)
                if self.boot is None:
                    self.boot = self._boot(self.artifact, "qcow2", self.artifact.name)
                    if sha256_file(self.artifact) != self.info.sha256:
                        raise ImageBuildError("the artifact changed during the boot test (it must stay read-only)")
                    sc.store_boot_test(self.boot, b.staging)
                return
        rep.stage_seconds["sparsify"] = round(self.beside.seconds, 2)
        self._compressed(info)
        self.artifact_ready = self.beside.finished_at
        sc.store_artifact(b, self.artifact, info, self.steps, self._beside_artifact())
        sc.reused_boot_test(info, str(b.accel.accel if b.accel else ""), b.staging)  # records why it ran
        sc.store_boot_test(self.boot, b.staging)

    def _boot(self, image: Path, fmt: str, label: str) -> dict[str, Any]:
        b = self.b
        assert b.accel is not None
        b.reporter.info("boot matrix: " + ", ".join(map(str, plan_cells(b.recipe))))
        try:
            result = boot_test(image, b.recipe, accel=b.accel, work=b.work, name=f"{b.domain_prefix}-boot",
                               logs=b.staging, reporter=b.reporter, image_format=fmt, label=label)
        except BootTestFailed as exc:
            if isinstance(exc.result, BootTestResult):  # a failed build keeps every cell's result
                (b.staging / "boot-test.json").write_text(json.dumps(exc.result.to_data(), indent=2))
            raise
        return result.to_data()

"""How one build uses the stage cache: which stages it may reuse, what it stores, and the lines it says.

Stored (``cache.py``): the installed disk before customization (``install``, a qcow2 converted from the
raw disk: customize-only changes skip the ~60-90 s install; a rebuild uses it in place through a qcow2
overlay, its digest checked while the appliance boots), the boot loader's output (``boot-loader``:
``install/grubcache.py``), and the compressed artifact with what the
build learnt about it (``artifact``, keyed by install + customize + compression: a rebuild with nothing
changed copies it in seconds) together with its boot-test result under the boot test's own key
(artifact sha256 + boot-test settings + the checks' code), so an unchanged image is not booted again.

Each stage's line says ``reused (key 3f2a…, from build X at T)`` or ``built (miss: what changed)``,
and the manifest records the same per stage, so a published image's provenance stays complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import customize as cz
from .cache import Entry, StageCache, describe_changes, key_of, link_or_copy
from .errors import CommandFailed, PreflightError
from .events import Reporter
from .install.grubcache import STAGE as BOOT_LOADER
from .install.media import MediaError
from .paths import cache_root
from .plan import CACHED_STAGES, StageKeys, archive_digests, boot_test_inputs, stage_keys
from .recipe import Recipe, to_data
from .run import run, tool_version
from .settings import current
from .sparsify import ArtifactInfo
from .workspace import Build

INSTALL_DISK = "disk.qcow2"
ARTIFACT = "artifact.qcow2"


@dataclass(frozen=True)
class CacheOptions:
    """How a build uses the stage cache."""
    use: bool = True                    # False (--no-cache): read nothing, write nothing
    rebuild: str = ""                   # this stage and those after it are built, not reused
    offline: bool = False               # no InRelease fetch: the newest install entry of the recipe
    require: tuple[str, ...] = ()       # fail before any work if these stages are not cached
    explain: bool = False               # print each stage's key inputs


@dataclass
class StageCacheUse:
    recipe: Recipe
    opts: CacheOptions
    reporter: Reporter
    cache: StageCache | None = None
    keys: StageKeys | None = None
    record: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifact_entry: Entry | None = None
    build_id: str = ""                  # set by the build once it has one
    artifact_miss: str = "not cached"   # why the artifact was not reused (the customize and sparsify lines)
    boot_inputs: dict[str, Any] = field(default_factory=dict)

    # -- setup -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, recipe: Recipe, steps: list[cz.Step], opts: CacheOptions, reporter: Reporter) -> StageCacheUse:
        """Compute the stage keys (fetching the suites' InRelease) and check --require-cached, before any
        work starts."""
        for stage in (opts.rebuild, *opts.require):
            if stage and stage not in CACHED_STAGES:
                raise PreflightError(f"unknown stage '{stage}' (stages: {', '.join(CACHED_STAGES)})")
        use = cls(recipe, opts, reporter)
        if not opts.use:
            use.record = {s: {"reused": False, "why": "--no-cache"} for s in CACHED_STAGES}
            if opts.require:
                raise PreflightError("--require-cached cannot be met with --no-cache")
            return use
        use.cache = StageCache(cache_root() / "stages", max_bytes=current().cache_max, reporter=reporter)
        archive = None if opts.offline else archive_digests(recipe, reporter)
        use.keys = stage_keys(recipe, steps, archive=archive, qemu_img=tool_version(["qemu-img", "--version"]))
        if use.keys is None:
            reporter.info(f"stage cache: not used for {recipe.install.backend} installs yet")
            use.record = {s: {"reused": False, "why": f"{recipe.install.backend} installs are not cached"}
                          for s in CACHED_STAGES}
            if opts.require:
                raise PreflightError(f"--require-cached: {recipe.install.backend} installs are not cached")
            return use
        if opts.offline:
            use._offline_archive()
        if opts.explain:
            for stage, inputs in use.keys.inputs.items():
                reporter.info(f"{stage} key {use.keys.key(stage)[:12]} inputs:\n"
                              + json.dumps(inputs, indent=2, sort_keys=True))
        for stage in opts.require:
            if not use._present(stage):
                raise PreflightError(f"--require-cached {stage}: the cache holds no entry for it "
                                     f"({use._miss(use._entry_stage(stage))})")
        return use

    def _offline_archive(self) -> None:
        """Offline: take the archive state of the newest install entry of this recipe that matches
        everything else, and say so."""
        assert self.cache is not None and self.keys is not None
        mine = dict(self.keys.inputs["install"]["install"])
        for e in sorted(self.cache.entries("install"), key=lambda e: -e.meta.get("created_ts", 0)):
            theirs = dict(e.meta.get("inputs", {}).get("install", {}))
            if {**theirs, "archive": None} == {**mine, "archive": None}:
                self.reporter.info(f"offline: using the archive state of install entry {e.key[:12]} ({e.origin}); "
                                   "security updates since then are not in this image")
                self.keys = _with_archive(self.keys, theirs["archive"])
                return
        self.reporter.info("offline: no cached install of this recipe to take the archive state from; "
                           "the install runs (apt still needs the mirror)")

    def _entry_stage(self, stage: str) -> str:
        return "install" if stage == "install" else "artifact"

    def _present(self, stage: str) -> bool:
        assert self.cache is not None and self.keys is not None
        entry = self.cache.lookup(self._entry_stage(stage), self.keys.key(self._entry_stage(stage)))
        if stage == "boot-test":
            return entry is not None and bool(entry.meta.get("boot"))
        return entry is not None

    def _miss(self, entry_stage: str) -> str:
        assert self.cache is not None and self.keys is not None
        return self.cache.explain_miss(entry_stage, self.recipe.name, self.keys.inputs[entry_stage])

    def _may_reuse(self, stage: str) -> bool:
        if self.cache is None or self.keys is None:
            return False
        return not (self.opts.rebuild and CACHED_STAGES.index(stage) >= CACHED_STAGES.index(self.opts.rebuild))

    # -- the lines and the record ------------------------------------------------------------------
    def line(self, stage: str) -> str:
        r = self.record.get(stage, {})
        if r.get("reused"):
            return f"{stage}: reused (key {r['key'][:12]}…, from build {r['from_build']} at {r['at']})"
        return f"{stage}: built (miss: {r.get('why', 'not cached')})"

    def _record_reuse(self, stage: str, entry: Entry, key: str) -> None:
        self.record[stage] = {"reused": True, "key": key, "from_build": entry.meta.get("build_id"),
                              "at": entry.meta.get("created")}

    def _reused(self, stage: str, entry: Entry, key: str) -> None:
        self._record_reuse(stage, entry, key)
        self.reporter.info(self.line(stage))

    def _built(self, stage: str, key: str | None, why: str) -> None:
        self.record[stage] = {"reused": False, "key": key, "why": why}
        self.reporter.info(self.line(stage))

    # -- the artifact (install + customize + sparsify) -------------------------------------------------
    def _why_not(self, stage: str) -> str | None:
        """Why ``stage`` cannot be reused at all, or None when the cache may be asked."""
        if self.cache is None or self.keys is None:
            return self.record.get(stage, {}).get("why", "not cached")
        if not self._may_reuse(stage):
            return f"--rebuild {self.opts.rebuild}"
        return None

    def reused_artifact(self, dest: Path) -> tuple[ArtifactInfo, dict[str, Any]] | None:
        why = self._why_not("customize") or self._why_not("sparsify")
        if why is not None:
            self.artifact_miss = why
            return None
        assert self.cache is not None and self.keys is not None
        key = self.keys.key("artifact")
        entry = self.cache.lookup("artifact", key)
        if entry is None:
            self.artifact_miss = self._miss("artifact")
            return None
        link_or_copy(entry.file(ARTIFACT))(dest)
        self.artifact_entry = entry
        install = self.cache.lookup("install", self.keys.key("install"))
        self._record_reuse("install", install or entry, self.keys.key("install"))
        for stage in ("customize", "sparsify"):
            self._record_reuse(stage, entry, key)
        return ArtifactInfo(**{**entry.meta["artifact"], "file": dest.name}), dict(entry.meta.get("build_inputs", {}))

    def earlier_artifact(self, b: Build) -> Path | None:
        """An artifact built on this very installed disk (the cached install this build customized: the
        same install key and root filesystem UUID) with the same compression settings, linked into the
        build's work dir (held against eviction), for the compression to take unchanged clusters from
        (``recompress``: every cluster it takes is compared with the new disk's first). None if none."""
        if self.cache is None or self.keys is None or not b.disk_from_cache or not b.inputs.get("root_fs_uuid"):
            return None
        want = self.keys.inputs["artifact"]
        same = [e for e in self.cache.entries("artifact")
                if e.meta.get("inputs", {}).get("install") == want["install"]
                and e.meta.get("inputs", {}).get("artifact") == want["artifact"]
                and e.meta.get("build_inputs", {}).get("root_fs_uuid") == b.inputs["root_fs_uuid"]]
        if not same:
            return None
        entry = max(same, key=lambda e: e.meta.get("created_ts", 0))
        dest = b.work / "earlier-artifact.qcow2"
        try:
            dest.unlink(missing_ok=True)
            link_or_copy(entry.file(ARTIFACT))(dest)
        except OSError:
            return None
        self.reporter.log(f"sparsify: the artifact of build {entry.meta.get('build_id')} was made on the same "
                          "installed disk: its unchanged clusters are taken, not compressed again")
        return dest

    def store_artifact(self, b: Build, artifact: Path, info: ArtifactInfo, steps: list[cz.Step],
                       beside: dict[str, Path] | None = None) -> None:
        """The artifact, with files read from the image that go with it (``beside``: its package
        database, for the SBOM of a build that reuses it)."""
        for stage in ("customize", "sparsify"):
            self._built(stage, self.keys.key("artifact") if self.keys else None, self.artifact_miss)
        if self.cache is None or self.keys is None:
            return
        self.artifact_entry = self.cache.store(
            "artifact", self.keys.key("artifact"), inputs=self.keys.inputs["artifact"], build_id=b.build_id,
            recipe=self.recipe.name,
            files={ARTIFACT: link_or_copy(artifact), **{n: link_or_copy(f) for n, f in (beside or {}).items()}},
            extra={"artifact": to_data(info), "build_inputs": b.inputs,
                   "customize_steps": [s.name for s in steps]}, known={ARTIFACT: info.sha256})

    # -- install -----------------------------------------------------------------------------------------
    def reusable_install(self, b: Build) -> PendingInstall | None:
        """The cached install as the build's disk, through a qcow2 overlay (no copy: the entry is held
        against eviction while the build runs), its digest checked in a thread (``PendingInstall``);
        None when the install must run (the line says why)."""
        why = self._why_not("install")
        if why is not None:
            self._built("install", self.keys.key("install") if self.keys else None, why)
            return None
        assert self.cache is not None and self.keys is not None
        key = self.keys.key("install")
        entry = self.cache.lookup("install", key, verify=False)
        if entry is not None:
            try:
                b.stack.enter_context(self.cache.in_use(entry))
            except FileNotFoundError:
                entry = None
        if entry is None:
            self._built("install", key, self._miss("install"))
            return None
        disk = b.work / INSTALL_DISK
        try:
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(entry.file(INSTALL_DISK)),
                 str(disk)], reporter=self.reporter, purpose="the cached install, through an overlay")
        except CommandFailed:
            if self.cache.verify(entry):  # intact: the failure is not the entry's
                raise
            self._built("install", key, "the cached entry was damaged (discarded)")
            return None
        b.disk, b.disk_format, b.disk_from_cache = disk, "qcow2", True
        return PendingInstall(self, b, entry, key)

    @contextlib.contextmanager
    def making(self, stage: str) -> Iterator[None]:
        """Hold the key's lock while making it: a second build of the same key waits, then reuses."""
        if self.cache is None or self.keys is None:
            yield
            return
        with self.cache.lock(stage, self.keys.key(stage)):
            yield

    def store_install(self, b: Build) -> None:
        if self.cache is None or self.keys is None or b.disk is None:
            return
        src, fmt = b.disk, b.disk_format

        def convert(dest: Path) -> None:
            # -U: the libguestfs appliance may be booting on the raw disk (launched ahead; it has not
            # touched it yet) and holds its lock
            run(["qemu-img", "convert", "-q", "-U", "-f", fmt, "-O", "qcow2", str(src), str(dest)],
                reporter=self.reporter, purpose="keep the installed disk in the stage cache")
        self.cache.store("install", self.keys.key("install"), inputs=self.keys.inputs["install"],
                         build_id=b.build_id, recipe=self.recipe.name, files={INSTALL_DISK: convert},
                         extra={"build_inputs": b.inputs})

    # -- the boot loader (a part of customize: install/grubcache.py) ------------------------------------
    def boot_loader_key_base(self) -> str | None:
        """The install key the boot loader's entry is keyed under, or None (recorded) when the build has
        no cache for it (--no-cache, an uncached backend)."""
        if self.cache is None or self.keys is None:
            self.record[BOOT_LOADER] = {"reused": False, "key": None,
                                          "why": self.record.get("install", {}).get("why", "not cached")}
            return None
        return self.keys.key("install")

    def reused_boot_loader(self, inputs: dict[str, Any]) -> Entry | None:
        """The entry for ``inputs``, unless --rebuild says customize is built (it is stored all the same)."""
        assert self.cache is not None
        key = key_of(inputs)
        why = self._why_not("customize")
        entry = self.cache.lookup(BOOT_LOADER, key) if why is None else None
        if entry is None:
            self._built(BOOT_LOADER, key, why or self.cache.explain_miss(BOOT_LOADER, self.recipe.name, inputs))
            return None
        self._reused(BOOT_LOADER, entry, key)
        return entry

    def store_boot_loader(self, inputs: dict[str, Any], files: dict[str, Any], extra: dict[str, Any]) -> None:
        assert self.cache is not None
        self.cache.store(BOOT_LOADER, key_of(inputs), inputs=inputs, build_id=self.build_id,
                         recipe=self.recipe.name, files=files, extra=extra)

    # -- boot test -----------------------------------------------------------------------------------------
    def reused_boot_test(self, info: ArtifactInfo, accel: str, staging: Path) -> dict[str, Any] | None:
        self.boot_inputs = boot_test_inputs(self.recipe, info.sha256, accel)
        key = key_of(self.boot_inputs)
        entry = self.artifact_entry
        boot = (entry.meta.get("boot") or {}) if entry is not None else {}
        why = self._why_not("boot-test")
        if why is None and (entry is None or boot.get("key") != key):
            why = ("the artifact is not cached" if entry is None else
                   "no boot-test result for this image yet" if not boot else
                   describe_changes(boot.get("inputs", {}), self.boot_inputs))
        if why is not None:
            self._built("boot-test", key, why)
            return None
        assert entry is not None
        for name in boot.get("logs", []):
            shutil.copyfile(entry.file(name), staging / name)
        self.record["boot-test"] = {"reused": True, "key": key, "from_build": boot.get("build_id"),
                                    "at": boot.get("at")}
        self.reporter.info(self.line("boot-test"))
        return dict(boot["result"])

    def store_boot_test(self, result: dict[str, Any], staging: Path) -> None:
        """Keep a passed boot test with its artifact (with its consoles), under the boot test's key."""
        entry = self.artifact_entry
        if self.cache is None or entry is None or not result.get("passed"):
            return
        logs = sorted(p.name for p in staging.glob("boot-console-*.log"))
        for name in logs:
            self.cache.add_file(entry, name, link_or_copy(staging / name))
        self.cache.update(entry, boot={"key": key_of(self.boot_inputs), "inputs": self.boot_inputs,
                                       "result": result, "logs": logs, "build_id": self.build_id,
                                       "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


class PendingInstall:
    """A cached install in use before its digest is checked: the check (3-4 s for an 800 MB disk) runs
    in a thread while the appliance boots on the overlay, which reads nothing of the disk before
    ``confirm``."""

    def __init__(self, use: StageCacheUse, b: Build, entry: Entry, key: str) -> None:
        assert use.cache is not None
        self.use, self.b, self.entry, self.key = use, b, entry, key
        self._ok: bool | None = None
        self._thread = threading.Thread(target=self._verify, name="cache-verify", daemon=True)
        self._thread.start()

    def _verify(self) -> None:
        assert self.use.cache is not None
        self._ok = self.use.cache.verify(self.entry)

    def confirm(self) -> bool:
        """True: the entry is intact and the build's disk. False: it was damaged and is discarded (with a
        warning), the overlay removed: the install runs."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.2)  # in Python, so a signal is handled at once
        b = self.b
        if not self._ok:
            assert b.disk is not None
            b.disk.unlink(missing_ok=True)
            b.disk, b.disk_format, b.disk_from_cache = None, "raw", False
            self.use._built("install", self.key, "the cached entry was damaged (discarded)")
            return False
        b.inputs = dict(self.entry.meta.get("build_inputs", {}))
        self.use._reused("install", self.entry, self.key)
        return True


def _with_archive(keys: StageKeys, archive: dict[str, str]) -> StageKeys:
    """The same keys with another archive state (every stage's chain starts with the install)."""
    inputs = json.loads(json.dumps(keys.inputs))
    for chain in inputs.values():
        chain["install"]["archive"] = archive
    return StageKeys(inputs)


def cache_status(recipe: Recipe, *, offline: bool = False) -> dict[str, Any]:
    """For ``invoke show``: each cached stage's key and whether the cache holds it (nothing is built)."""
    try:
        use = StageCacheUse.open(recipe, cz.selected_steps(recipe), CacheOptions(offline=offline),
                                 Reporter(io.StringIO()))
    except MediaError as exc:
        return {"unknown": f"the archive could not be read for the install key: {exc}"}
    if use.keys is None or use.cache is None:
        return {"not_cached": f"{recipe.install.backend} installs are not cached"}
    out: dict[str, Any] = {}
    for stage in ("install", "artifact"):
        key = use.keys.key(stage)
        entry = use.cache.lookup(stage, key)
        out[stage] = {"key": key, "cached": entry is not None,
                      **({"from_build": entry.meta.get("build_id"), "at": entry.meta.get("created"),
                          "boot_test": bool(entry.meta.get("boot"))} if entry else
                         {"miss": use.cache.explain_miss(stage, recipe.name, use.keys.inputs[stage])})}
    return out

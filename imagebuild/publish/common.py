"""What every image store shares: the artifact a publish is allowed to send, and how bytes are sent.

``load_published_artifact`` is the gate: it reads ``manifest.json``, re-hashes the qcow2 and compares
sha256 (and sha512) with the manifest, asks qemu-img what the file is (format named, no backing file,
virtual size as recorded), and refuses an image whose boot test did not pass unless ``force`` is given,
in which case the artifact says so and every store records it. A cloud image is refused, too, by a store
whose own seed (Glance: nova, oVirt: ovirt) no passed boot-test cell booted with.

``UploadStream`` is the body of an upload: a file-like object that reads the file in fixed chunks (so
memory stays flat whatever the image size), reports progress, can be rate-limited, and lets a signal
handler interrupt it between chunks.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from ..digest import hash_file
from ..errors import ImageBuildError, PublishError, ToolMissing
from ..events import NULL_REPORTER, Reporter
from ..procs import token_alive
from ..recipe import Recipe, SeedKind, publish_firmware
from ..run import run

MANIFEST = "manifest.json"
RECORD = "published.jsonl"
CHUNK_SIZE = 4 * 1024 * 1024
GIB = 1024 ** 3
QCOW2_MAGIC = b"QFI\xfb"
_HEX = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "sha512": re.compile(r"^[0-9a-f]{128}$")}


@dataclass(frozen=True)
class ImageFacts:
    """How an image store should describe the guest: the OS from the recipe, the firmware and chipset
    from the boot-test cells that passed (``boot_firmware`` is what is advertised)."""
    os_distro: str
    os_version: str
    os_type: str = "linux"
    machine_type: str = "pc"
    boot_firmware: str = "bios"        # bios, uefi or secure-boot: a passed cell proved it
    min_ram_mib: int = 512
    guest_agent: bool = False
    passed_cells: tuple[str, ...] = ()  # "uefi/q35", ... in matrix order
    disk_buses: tuple[str, ...] = ("virtio",)  # root disk buses a passed cell booted from
    live_checks: tuple[str, ...] = ()  # live operations (vcpu-hotplug, memory-hotplug, balloon, fsfreeze) that passed
    matrix: tuple[str, ...] = ()       # the passed cells with their seeds, "bios/pc+nova", ... ("uefi/q35": no seed)
    cloud: bool = False                # cloud-init set up (cloud.enabled): the user and key come from a seed
    admin_user: str = ""               # a cloud image's default user (root is locked); "" otherwise
    cloud_seeds: tuple[str, ...] = ()  # seed kinds (nocloud, nova, ovirt) a passed cell booted with, sorted

    @property
    def quiesce(self) -> bool:
        """Snapshots may require a quiesced guest: the agent is advertised and freeze/thaw through it passed
        in every passed cell that ran it (at least one did)."""
        return self.guest_agent and "fsfreeze" in self.live_checks

    @property
    def firmware(self) -> str:
        """bios or uefi (how OpenStack's hw_firmware_type names it)."""
        return "bios" if self.boot_firmware == "bios" else "uefi"

    @property
    def secure_boot(self) -> bool:
        return self.boot_firmware == "secure-boot"

    @property
    def ovirt_bios_type(self) -> str:
        """oVirt's BiosType for the advertised firmware and chipset."""
        if self.boot_firmware == "bios":
            return "q35_sea_bios" if self.machine_type == "q35" else "i440fx_sea_bios"
        return "q35_secure_boot" if self.secure_boot else "q35_ovmf"


@dataclass(frozen=True)
class Artifact:
    """A verified build output, ready to publish."""
    output_dir: Path
    path: Path
    recipe: str
    recipe_version: str
    build_id: str
    finished: str                      # ISO 8601, from the manifest
    format: str
    virtual_size: int
    file_size: int
    sha256: str
    sha512: str
    manifest_sha256: str
    image: ImageFacts
    boot_test: str                     # "passed", "failed" or "not-run"
    boot_test_accelerator: str = ""
    forced: bool = False               # published although the boot test did not pass
    publish_settings: dict[str, Any] = field(default_factory=dict)  # the recipe's [publish], as built

    @property
    def serial(self) -> str:
        """The build's date and serial: the build id without the recipe name in front."""
        prefix = self.recipe + "-"
        return self.build_id[len(prefix):] if self.build_id.startswith(prefix) else self.build_id

    @property
    def versioned_name(self) -> str:
        return f"{self.recipe}-v{self.recipe_version}-{self.serial}"

    @property
    def min_disk_gib(self) -> int:
        return max(1, math.ceil(self.virtual_size / GIB))

    def provenance(self) -> dict[str, str]:
        """Properties that say where an image came from; stores attach them verbatim."""
        return {
            "imagebuild_recipe": self.recipe,
            "imagebuild_recipe_version": self.recipe_version,
            "imagebuild_build_id": self.build_id,
            "imagebuild_built": self.finished,
            "imagebuild_sha256": self.sha256,
            "imagebuild_manifest_sha256": self.manifest_sha256,
            "imagebuild_boot_test": self.boot_test,
            "imagebuild_forced": "true" if self.forced else "false",
        }


@dataclass(frozen=True)
class PublishResult:
    target: str                        # "glance" or "ovirt"
    image_id: str
    name: str
    created: bool                      # False: the same artifact was already there (a no-op)
    forced: bool
    location: str = ""                 # the store's endpoint or engine URL (never credentials)
    method: str = ""                   # e.g. glance-direct, upload, imageio
    rotated: tuple[str, ...] = ()      # ids deleted by rotation
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rotated"] = list(self.rotated)
        return data


# -- the gate ------------------------------------------------------------------------------------

def _get(data: dict[str, Any], dotted: str, kind: type | tuple[type, ...], manifest: Path) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise PublishError(f"{manifest}: '{dotted}' is missing; is this a manifest from a build?")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise PublishError(f"{manifest}: '{dotted}' has the wrong type ({type(value).__name__})")
    return value


def _qemu_img_info(path: Path, reporter: Reporter) -> dict[str, Any]:
    try:
        res = run(["qemu-img", "info", "--output=json", "-f", "qcow2", path], reporter=reporter,
                  timeout=120, purpose="check what the artifact is before publishing it")
    except ToolMissing as exc:
        raise PublishError(str(exc)) from None
    return json.loads(res.stdout)


def load_published_artifact(output_dir: Path | str, *, force: bool = False, seed: SeedKind | None = None,
                            store: str = "", reporter: Reporter = NULL_REPORTER) -> Artifact:
    """Read and verify a build's output folder; raise ``PublishError`` if it must not be published.

    ``force`` lets an image whose boot test failed or did not run through (and is recorded as such);
    it never lets through an artifact whose bytes differ from its manifest. ``seed`` is the seed kind
    the ``store`` (named in the refusal) hands its guests: a cloud image whose cell with that seed did
    not pass is refused (unless forced, as the firmware a cell must prove).
    """
    out = Path(output_dir)
    manifest_path = out / MANIFEST
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise PublishError(f"no {MANIFEST} in {out}: build the recipe first (invoke build)") from None
    except OSError as exc:
        raise PublishError(f"cannot read {manifest_path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PublishError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise PublishError(f"{manifest_path}: unknown manifest schema {data.get('schema')!r} (expected 1)"
                           if isinstance(data, dict) else f"{manifest_path}: not a manifest")

    art = _get(data, "artifact", dict, manifest_path)
    file_name = _get(data, "artifact.file", str, manifest_path)
    if "/" in file_name or file_name in ("", ".", ".."):
        raise PublishError(f"{manifest_path}: artifact.file must be a file name, got {file_name!r}")
    fmt = _get(data, "artifact.format", str, manifest_path)
    if fmt != "qcow2":
        raise PublishError(f"{manifest_path}: artifact.format is {fmt!r}; only qcow2 is published")
    want = {a: _get(data, f"artifact.{a}", str, manifest_path).lower() for a in ("sha256", "sha512")}
    for algo, value in want.items():
        if not _HEX[algo].match(value):
            raise PublishError(f"{manifest_path}: artifact.{algo} is not a {algo} hex digest")
    virtual_size = _get(data, "artifact.virtual_size", int, manifest_path)
    recipe = _get(data, "recipe", dict, manifest_path)
    image = _get(data, "recipe.image", dict, manifest_path)
    recipe_name = _get(data, "recipe.name", str, manifest_path)
    build_id = _get(data, "build_id", str, manifest_path)

    path = out / file_name
    if not path.is_file():
        raise PublishError(f"{path} (named by {manifest_path}) does not exist")
    file_size = path.stat().st_size
    if art.get("file_size") not in (None, file_size):
        raise PublishError(f"{path} is {file_size} bytes but the manifest says {art['file_size']}: "
                           "not the artifact that was built and tested")
    with open(path, "rb") as f:
        if f.read(4) != QCOW2_MAGIC:
            raise PublishError(f"{path} is not a qcow2 file (bad magic)")

    with reporter.step(f"verify {path.name} against its manifest"):
        progress = Progress(reporter, "hash", file_size)
        got = hash_file(path, ("sha256", "sha512"), progress.add)
        progress.done()
        for algo in ("sha256", "sha512"):
            if got[algo] != want[algo]:
                raise PublishError(f"{path}: {algo} is {got[algo]} but the manifest says {want[algo]}: "
                                   "the file changed after it was built and tested; rebuild it")
        info = _qemu_img_info(path, reporter)
        if info.get("format") != "qcow2":
            raise PublishError(f"{path}: qemu-img reads it as {info.get('format')!r}, not qcow2")
        if info.get("backing-filename") or info.get("full-backing-filename"):
            raise PublishError(f"{path} has a backing file ({info.get('backing-filename')}); "
                               "an image to publish must stand alone")
        if info.get("virtual-size") != virtual_size:
            raise PublishError(f"{path}: virtual size {info.get('virtual-size')} differs from the "
                               f"manifest's {virtual_size}")

    bt = data.get("boot_test")
    if bt is None:
        boot_test = "not-run"
    elif isinstance(bt, dict) and isinstance(bt.get("passed"), bool):
        boot_test = "passed" if bt["passed"] else "failed"
    else:
        raise PublishError(f"{manifest_path}: boot_test must be null or have a boolean 'passed'")
    forced = False
    if boot_test != "passed":
        if not force:
            what = "failed" if boot_test == "failed" else "was not run"
            raise PublishError(f"{recipe_name}: the boot test {what} for build {build_id}; "
                               "only boot-tested images are published "
                               "(--force publishes anyway and records that it was forced)")
        forced = True
        reporter.info(f"⚠ publishing {build_id} although its boot test {boot_test.replace('-', ' ')}"
                      " (--force); the image is marked imagebuild_forced=true")
        reporter.event("publish-forced", build_id=build_id, boot_test=boot_test)

    packages = recipe.get("packages") or {}
    all_packages = list(packages.get("base") or []) + list(packages.get("extra") or [])
    parsed = _recipe(manifest_path, recipe)
    proven = _proven(manifest_path, parsed, bt, forced)
    if seed is not None and parsed.cloud.enabled and not forced:
        _require_seed(parsed.name, build_id, bt, seed, store or "this store")
    facts = ImageFacts(
        os_distro=str(image.get("os_distro") or ""),
        os_version=str(image.get("os_version") or recipe.get("version") or ""),
        os_type=str(image.get("os_type") or "linux"),
        machine_type=proven.machine,
        boot_firmware=proven.firmware,
        min_ram_mib=int(image.get("min_ram_mib") or 512),
        guest_agent="qemu-guest-agent" in all_packages and (proven.guest_agent or forced),
        passed_cells=proven.cells,
        disk_buses=proven.disk_buses,
        live_checks=proven.live,
        matrix=proven.matrix,
        cloud=parsed.cloud.enabled,
        admin_user=parsed.cloud.default_user if parsed.cloud.enabled else "",
        cloud_seeds=tuple(sorted(s for s in proven.seeds if s != SeedKind.NONE)),
    )
    if not facts.os_distro:
        raise PublishError(f"{manifest_path}: recipe.image.os_distro is empty")
    return Artifact(
        output_dir=out, path=path, recipe=recipe_name, recipe_version=str(recipe.get("version") or "1"),
        build_id=build_id, finished=str(data.get("finished") or ""), format=fmt,
        virtual_size=virtual_size, file_size=file_size, sha256=got["sha256"], sha512=got["sha512"],
        manifest_sha256=hashlib.sha256(raw).hexdigest(), image=facts, boot_test=boot_test,
        boot_test_accelerator=str(bt.get("accelerator") or "") if isinstance(bt, dict) else "",
        forced=forced, publish_settings=dict(recipe.get("publish") or {}))


LIVE_CHECKS = ("vcpu-hotplug", "memory-hotplug", "balloon", "fsfreeze")


@dataclass(frozen=True)
class Proven:
    """What the passed boot-test cells showed, for the stores to advertise."""
    machine: str
    firmware: str                      # bios, uefi or secure-boot
    cells: tuple[str, ...]             # the passed cells
    disk_buses: tuple[str, ...]        # root disk buses a passed cell booted from
    live: tuple[str, ...]              # live operations that passed in every passed cell that ran them
    guest_agent: bool                  # a passed cell's agent answered
    matrix: tuple[str, ...]            # the passed cells with their seeds (cell_label)
    seeds: frozenset[str]              # the seed kinds of the passed cells, "none" included


def _recipe(manifest_path: Path, recipe: dict[str, Any]) -> Recipe:
    try:
        return Recipe.from_json(json.dumps(recipe))
    except ImageBuildError as exc:
        raise PublishError(f"{manifest_path}: the recipe it records does not load: {exc}") from None


def _seed(cell: dict[str, Any]) -> str:
    """The seed a manifest's cell booted with; cells from before seeded cells had none."""
    return str(cell.get("seed") or SeedKind.NONE)


def cell_label(cell: dict[str, Any]) -> str:
    """A cell as stores list it: "bios/pc+nova", or just "bios/pc" when it booted with no seed (as every
    cell did before seeded cells, so such a manifest reads as it always did)."""
    seed = _seed(cell)
    return str(cell.get("cell")) + ("" if seed == SeedKind.NONE else f"+{seed}")


def _require_seed(name: str, build_id: str, bt: Any, seed: SeedKind, store: str) -> None:
    """A cloud image goes to a store only if a cell that booted with the store's own seed passed: that
    cell proved its default user, key, hostname and growth come through the way this store hands them."""
    cells = [c for c in (bt.get("cells") if isinstance(bt, dict) else None) or [] if isinstance(c, dict)]
    mine = [c for c in cells if _seed(c) == seed]
    if any(c.get("passed") is True for c in mine):
        return
    refusal = f"{name}: refusing to publish a cloud image to {store}: "
    if mine:
        raise PublishError(refusal + f"its boot-test cell {', '.join(cell_label(c) for c in mine)} did not pass "
                           f"in build {build_id} (its console log beside the artifact says why)")
    if not any("seed" in c for c in cells):
        raise PublishError(refusal + f"build {build_id} has no boot-test cell with the {seed} seed (it records "
                           "no seeds: a build from before seeded cells); rebuild it")
    raise PublishError(refusal + f"build {build_id} has no boot-test cell with the {seed} seed (cells: "
                       f"{', '.join(cell_label(c) for c in cells)}); add \"{seed}\" to boot_test.seeds and rebuild")


def _proven(manifest_path: Path, parsed: Recipe, bt: Any, forced: bool) -> Proven:
    """What the recipe asks stores to use (firmware, machine), which a passed boot-test cell must have
    proven, and what else the passed cells showed (a forced publish advertises the recipe's wish)."""
    wanted = publish_firmware(parsed)
    if wanted is None:
        raise PublishError(f"{manifest_path}: publish.firmware {parsed.publish.firmware!r} cannot boot a "
                           f"{parsed.image.firmware} image")
    machine = str(parsed.image.machine_type)
    cells = bt.get("cells") if isinstance(bt, dict) else None
    good = [c for c in cells or [] if isinstance(c, dict) and c.get("passed") is True]
    passed = tuple(str(c.get("cell")) for c in good)
    want_cell = f"{wanted}/{machine}"
    if not forced and want_cell not in passed:
        if cells is None:
            raise PublishError(f"{manifest_path}: the boot test records no cells (a build from before the boot "
                               "matrix): rebuild it, so the firmware it advertises has been proven")
        raise PublishError(f"{parsed.name}: would advertise {wanted} firmware on {machine}, but no boot-test "
                           f"cell {want_cell} passed (passed: {', '.join(passed) or 'none'}); "
                           "set boot_test.matrix / publish.firmware / image.machine_type to what was tested")
    ran = [{k["name"]: k.get("ok") for k in c.get("checks", []) if isinstance(k, dict) and not k.get("skipped")}
           for c in good]
    live = tuple(name for name in LIVE_CHECKS
                 if any(name in checks for checks in ran) and all(checks.get(name, True) for checks in ran))
    return Proven(machine=machine, firmware=str(wanted), cells=passed,
                  disk_buses=tuple(dict.fromkeys(str(c.get("disk_bus") or "virtio") for c in good)),
                  live=live, guest_agent=bool(good), matrix=tuple(cell_label(c) for c in good),
                  seeds=frozenset(_seed(c) for c in good))


def record_publish(artifact: Artifact, result: PublishResult) -> None:
    """Append what was published (and whether it was forced) to the output folder's record."""
    entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "build_id": artifact.build_id,
             "sha256": artifact.sha256, "boot_test": artifact.boot_test, **result.to_json()}
    with open(artifact.output_dir / RECORD, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


# -- progress and streaming ------------------------------------------------------------------------

class Progress:
    """A progress bar on a terminal, a line every 25% otherwise, and events for machines."""

    def __init__(self, reporter: Reporter, what: str, total: int) -> None:
        self.reporter = reporter
        self.what = what
        self.total = max(total, 1)
        self.done_bytes = 0
        self.start = time.monotonic()
        self._last_event = 0.0
        self._last_quarter = 0
        self._tty = bool(getattr(reporter.stream, "isatty", lambda: False)())
        reporter.event("progress", what=what, done=0, total=total)

    def add(self, n: int) -> None:
        self.done_bytes += n
        now = time.monotonic()
        if now - self._last_event >= 0.5:
            self._last_event = now
            self.reporter.event("progress", what=self.what, done=self.done_bytes, total=self.total)
            if self._tty:
                self._draw(now)
        quarter = self.done_bytes * 4 // self.total
        if not self._tty and quarter > self._last_quarter and quarter < 4:
            self._last_quarter = quarter
            self.reporter.info(f"{self.what}: {quarter * 25}% ({self._rate(now)})")

    def _rate(self, now: float) -> str:
        secs = max(now - self.start, 1e-6)
        mib = 2**20
        done, total = self.done_bytes / mib, self.total / mib
        return f"{done:.0f}/{total:.0f} MiB, {done / secs:.1f} MiB/s"

    def _draw(self, now: float) -> None:
        width = 30
        filled = int(width * self.done_bytes / self.total)
        bar = "#" * filled + "-" * (width - filled)
        self.reporter.stream.write(f"\r  {self.what} [{bar}] {100 * self.done_bytes // self.total:3d}% "
                                   f"{self._rate(now)}  ")
        self.reporter.stream.flush()

    def done(self) -> None:
        now = time.monotonic()
        if self._tty:
            self._draw(now)
            self.reporter.stream.write("\n")
        self.reporter.event("progress", what=self.what, done=self.done_bytes, total=self.total)
        self.reporter.log(f"{self.what}: {self._rate(now)} in {now - self.start:.1f}s")


class UploadStream(io.RawIOBase):
    """The request body of an upload: reads ``path`` in chunks, never more than one in memory.

    ``len()`` gives the size so HTTP clients send a Content-Length (no chunked encoding). Reads may be
    rate-limited (bytes per second). ``sha512`` is computed over exactly the bytes handed out, so an
    upload can tell "the file changed under us" from "the store stored other bytes".
    """

    def __init__(self, path: Path, progress: Progress | None = None, *, rate_limit: int | None = None,
                 chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = os.fstat(self._f.fileno()).st_size
        self.progress = progress
        self.rate_limit = rate_limit
        self.chunk_size = chunk_size
        self.sent = 0
        self._hash = hashlib.sha512()
        self._start = time.monotonic()

    def __len__(self) -> int:
        return self.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        # requests sizes a body as len() minus tell(); io's default tell() raises, which would make
        # it fall back to chunked transfer encoding instead of a Content-Length.
        return self.sent

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or n > self.chunk_size:
            n = self.chunk_size
        data = self._f.read(n)
        if data:
            self.sent += len(data)
            self._hash.update(data)
            if self.progress:
                self.progress.add(len(data))
            if self.rate_limit:
                ahead = self.sent / self.rate_limit - (time.monotonic() - self._start)
                if ahead > 0:
                    time.sleep(ahead)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        while chunk := self.read(self.chunk_size):
            yield chunk

    @property
    def sha512(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._f.close()
        super().close()


# -- cleanup that a second Ctrl-C must not cut short -------------------------------------------------

@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up a half-made remote object; deliver them afterwards.

    Without this, a second Ctrl-C during the delete of a half-uploaded image would leave it behind.
    Only the main thread can block signals for the process's Python handlers; elsewhere it is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


RIVAL_POLL_SECONDS = 3.0  # how often a publish looks again at another one's upload of the same artifact


def rival_at_work(token: str, started: float, stale_minutes: int, status: str) -> tuple[bool, str]:
    """Is an unfinished upload of our artifact, made by the publish ``token`` (a process token) that
    started at ``started`` (epoch seconds), still at work? ``(False, why)`` makes it a leftover.

    This host can tell whether its own processes run; another host's upload is presumed at work
    until it is ``stale_minutes`` old."""
    alive = token_alive(token)
    if alive is None and token:
        age_min = (time.time() - started) / 60
        if age_min < stale_minutes:
            return True, ""
        return False, f"left {status} by {token} {age_min:.0f} min ago, past stale_upload_minutes = {stale_minutes}"
    if alive:
        return True, ""
    return False, f"left {status} by a publish that is gone ({token or 'no uploader recorded'})"


@dataclass(frozen=True)
class Rival:
    """Another publish's unfinished upload of the same artifact."""
    id: str
    uploader: str        # its process token, or "" if it recorded none
    status: str
    started: float       # when its record was created (epoch seconds)


@dataclass
class Survey:
    """What a store holds of one artifact, once leftovers and bad copies are removed."""
    existing: Any = None                                # the finished copy (it has an ``id``), if any
    rivals: list[Rival] = field(default_factory=list)   # uploads other publishes have at work

    def started_no_later(self, started: float) -> str:
        """The id of a copy begun no later than ``started`` (ours then steps back), or "". A tie counts:
        both step back and retry after a random pause, since store clocks have coarse steps."""
        if self.existing is not None:
            return str(self.existing.id)
        return next((r.id for r in self.rivals if r.started <= started), "")


def find_or_upload(survey: Callable[[], Survey], upload: Callable[[], Any], *,
                   what: str, timeout: float, reporter: Reporter) -> tuple[Any, bool]:
    """The one copy of an artifact in a store: ``(found, False)`` or ``(upload(), True)``.

    ``survey`` returns the finished copy (or None) and the uploads other publishes have at work;
    ``upload`` returns None when it stepped back for a publish that started no later. While another
    publish is uploading the artifact, wait for it (at most ``timeout`` seconds), then look again."""
    deadline = time.monotonic() + timeout
    waited_for: set[str] = set()
    while True:
        found = survey()
        existing, rivals = found.existing, found.rivals
        if existing is not None:
            return existing, False
        if not rivals:
            done = upload()
            if done is not None:
                return done, True
            continue  # another publish of this artifact started first: wait for it
        for rival in rivals:
            if rival.id not in waited_for:
                waited_for.add(rival.id)
                reporter.info(f"another publish ({rival.uploader or 'unknown'}) is uploading this artifact "
                              f"as {what} {rival.id} ('{rival.status}'); waiting for it")
        if time.monotonic() >= deadline:
            raise PublishError(f"another publish of this artifact is still uploading it after {timeout:.0f}s "
                               f"({what} {rivals[0].id}); try again later, or delete it if its publisher "
                               "is gone")
        time.sleep(RIVAL_POLL_SECONDS)


def yield_pause() -> None:
    """After stepping back for a publish that started no later: a random pause, so two that started
    in the same clock step do not collide again."""
    time.sleep(random.uniform(0.5, RIVAL_POLL_SECONDS))


def undo_upload(exc: BaseException, undo: Callable[[], None], failed: str) -> NoReturn:
    """After an upload failed or was interrupted by ``exc``: run ``undo`` (remove what the store holds
    of it) with signals held, so a second Ctrl-C cannot cut it short; then raise. Our own errors and
    interrupts go on as they are; anything else becomes a PublishError saying ``failed``."""
    with signals_deferred():
        undo()
    if isinstance(exc, ImageBuildError) or not isinstance(exc, Exception):
        raise exc
    raise PublishError(f"{failed}: {describe_exception(exc)}") from None


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5,
               max_interval: float = 5.0) -> Any:
    """Poll ``check`` (returns a truthy value when done, raises to fail) with backoff, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise PublishError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def describe_exception(exc: BaseException) -> str:
    """One line for an SDK error, without request bodies (which could hold credentials)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}"

"""The mutable side of a build (mkosi's Context next to the frozen Recipe), and its resources.

Every build gets an id that tags everything it creates: its work dir, its staging dir, its libvirt
domains. The work dir records the owning process, so that ``clean.clean_stale`` can tell what dead builds
left behind (after a SIGKILL nothing could clean up in-process).

A build's work dir is a tmpfs of its own when the host's memory allows (``scratch_plan``, as
diskimage-builder builds in a tmpfs when it has the memory): the root tree mmdebstrap writes (~20 000
files, dpkg renaming and unlinking each), the raw disks the seal reads and writes, and the boot test's
overlays then never touch the host's filesystem, its journal or its discards. Measured alternately on
debian12 (docs/speed.md): the build 0.88x of the same build on disk. The tmpfs is sized for the work's
worst case, ``3 x disk_gib + 1`` GiB (the tree and the raw disk during the install, the disk and its
sealed copy during the seal, the cells' overlays), so it can never fill before a disk of that size
would; it is used only when the memory available holds that and ``MEMORY_RESERVE_GIB`` more for the
guests beside it (the appliance, the cells). It is a mount under ``IMAGEBUILD_WORK``, unmounted with the
work dir (``remove_tree``), and by ``clean`` after a build that was killed. ``--keep-work`` keeps the
work dir on disk, for reading after the build; ``IMAGEBUILD_WORK_TMPFS=off`` always does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .accel import AccelChoice
from .domain import DomainError, connect, dom_exists, libvirt
from .errors import ImageBuildError, PreflightError
from .events import NULL_REPORTER, Reporter
from .procs import pid_alive, proc_start_time
from .recipe import Recipe
from .run import run
from .settings import current

DOMAIN_PREFIX = "imagebuild-"
GIB = 1024**3
# guests beside a work dir in memory: the libguestfs appliance, the boot test's cells side by side
MEMORY_RESERVE_GIB = 4
TMPFS_SOURCE = "imagebuild-work"  # the mount's source in /proc/mounts: a build's work dir in memory


def work_root() -> Path:
    return current().work


def output_root() -> Path:
    return current().output


def new_build_id(recipe_name: str) -> str:
    return f"{recipe_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass
class Build:
    """What a running build owns and has learnt so far."""
    recipe: Recipe
    build_id: str
    work: Path                          # scratch space, removed at the end
    output_dir: Path                    # final place: output/<recipe>/
    staging: Path                       # output/.tmp-<build id>/, renamed to output_dir when complete
    reporter: Reporter
    stack: ExitStack
    accel: AccelChoice | None = None
    disk: Path | None = None            # the working disk the installer produced
    disk_format: str = "raw"
    disk_from_cache: bool = False       # the disk is a stage-cache install entry (its layout was checked when made)
    inputs: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    stage_cache: Any = None             # the build's StageCacheUse (the boot loader's entry is made in customize)

    @property
    def use_cache(self) -> bool:
        """Reuse verified downloads kept on this host (apt packages): the build's cache options decide
        (``--no-cache`` reads and writes no cache, stages and packages alike)."""
        return self.stage_cache is None or bool(self.stage_cache.opts.use)

    @property
    def domain_prefix(self) -> str:
        return f"{DOMAIN_PREFIX}{self.build_id}"

    @property
    def artifact_name(self) -> str:
        return f"{self.recipe.name}.qcow2"

    def socket_dir(self) -> Path:
        """A short path for unix sockets (108-byte limit; the work dir may be deep), owned by the build."""
        d = socket_dir_for(self.build_id)
        if not d.exists():
            d.mkdir(mode=0o700)
            self.stack.callback(shutil.rmtree, d, True)
        return d


def socket_dir_for(build_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"imagebuild-{build_id}"


@dataclass(frozen=True)
class Scratch:
    """Where a build's work dir lives: a tmpfs of at most ``tmpfs_bytes``, or (None) the disk under
    ``IMAGEBUILD_WORK``; ``reason`` says why, for the log and the manifest."""
    tmpfs_bytes: int | None
    reason: str

    @property
    def where(self) -> str:
        return "tmpfs" if self.tmpfs_bytes else "disk"


def memory_available() -> int:
    """The kernel's estimate of memory that can be used without swapping (``MemAvailable``), in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def scratch_plan(disk_gib: int, *, setting: str, keep_work: bool, available: int) -> Scratch:
    """A tmpfs of the work's worst case (``3 x disk_gib + 1`` GiB: see the module's docstring) when
    ``available`` memory holds it and ``MEMORY_RESERVE_GIB`` more; else the disk."""
    if setting == "off":
        return Scratch(None, "IMAGEBUILD_WORK_TMPFS=off")
    if keep_work:
        return Scratch(None, "--keep-work keeps it for reading after the build")
    bound = (3 * disk_gib + 1) * GIB
    wanted = bound + MEMORY_RESERVE_GIB * GIB
    if available < wanted:
        return Scratch(None, f"{available / GIB:.1f} GiB of memory available, a tmpfs for a {disk_gib} GiB disk "
                             f"wants {wanted / GIB:.0f} GiB ({bound / GIB:.0f} for the work's worst case, "
                             f"{MEMORY_RESERVE_GIB} for the guests)")
    return Scratch(bound, f"tmpfs of up to {bound / GIB:.0f} GiB, {available / GIB:.1f} GiB of memory available")


def create_work_dir(build_id: str, scratch: Scratch | None = None, reporter: Reporter = NULL_REPORTER) -> Path:
    """``IMAGEBUILD_WORK/BUILD_ID``, with its owner record; a tmpfs mounted there first when ``scratch``
    asks for one. A mount the host refuses (no CAP_SYS_ADMIN in a container) leaves the work on disk,
    logged: the build is the same, only slower."""
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    work = root / build_id
    work.mkdir(mode=0o700)
    if scratch is not None and scratch.tmpfs_bytes:
        res = run(["mount", "-t", "tmpfs", "-o", f"size={scratch.tmpfs_bytes},mode=0700", TMPFS_SOURCE, str(work)],
                  reporter=reporter, check=False, purpose="the build's scratch space in memory")
        if res.returncode != 0:
            reporter.log(f"scratch space on disk: mounting a tmpfs on {work} failed: {res.stderr.strip()}")
    owner = {"pid": os.getpid(), "start": proc_start_time(os.getpid()), "build_id": build_id}
    (work / "owner.json").write_text(json.dumps(owner))
    return work


def owner_alive(work: Path) -> bool:
    try:
        owner = json.loads((work / "owner.json").read_text())
    except (OSError, ValueError):
        # an unreadable owner file: only a very new dir may be mid-creation
        return time.time() - work.stat().st_mtime < 60
    pid = int(owner.get("pid", 0))
    return pid > 0 and pid_alive(pid) and proc_start_time(pid) == owner.get("start")


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(prefix) or target == prefix.rstrip("/"):
            out.append(target)
    return sorted(out, key=len, reverse=True)


def remove_tree(path: Path, reporter: Reporter) -> None:
    """Remove a scratch tree; never follow a mount out of it (a bootstrap tree may have /dev bound)."""
    if not path.exists():
        return
    for target in mounts_below(path):
        run(["umount", "--lazy", target], reporter=reporter, check=False, purpose="release a leftover mount")
    if mounts_below(path):
        raise PreflightError(f"cannot remove {path}: mounts are still present below it")
    run(["rm", "-rf", "--one-file-system", "--", str(path)], reporter=reporter, purpose="remove scratch space")


def remove_tree_beside(path: Path, build: Build) -> None:
    """Remove a scratch tree in a thread while the build goes on: ``rm`` of a bootstrap root tree
    (~20 000 files) takes ~3 s, which sat between the install and customize. Renamed first, so nothing
    finds it under its name meanwhile; the build waits for it as it ends (an interrupt included), and
    the work dir's own removal covers whatever is left."""
    if not path.exists():
        return
    doomed = path.with_name(path.name + ".removing")
    path.rename(doomed)

    def remove() -> None:
        try:
            remove_tree(doomed, build.reporter)
        except ImageBuildError as exc:  # the work dir's removal at the end tries again
            build.reporter.log(f"removing {doomed} beside the build failed: {exc}")

    t = threading.Thread(target=remove, name="remove-tree", daemon=True)
    t.start()
    build.stack.callback(t.join)


def destroy_domains(prefix: str, reporter: Reporter) -> list[str]:
    """Destroy (and undefine) every libvirt domain whose name starts with ``prefix``. A domain that goes
    away meanwhile is fine: a transient domain is gone once destroyed, and a boot test's cells destroy
    their own while this runs for all of them (an interrupt of cells side by side)."""
    names: list[str] = []
    try:
        conn = connect()
    except Exception as exc:  # libvirt not running: nothing of ours can be there
        reporter.log(f"libvirt not reachable while cleaning ({exc}); skipping domains")
        return names
    try:
        for dom in conn.listAllDomains():
            name = dom.name()
            if not name.startswith(prefix):
                continue
            names.append(name)
            try:
                persistent = dom.isPersistent()
                if dom.isActive():
                    dom.destroy()
                if persistent:
                    dom.undefine()
            except libvirt.libvirtError as exc:
                if dom_exists(conn, name):
                    raise DomainError(f"could not destroy domain {name}: {exc}") from None
    finally:
        conn.close()
    return names


def publish_output(staging: Path, final: Path, build_id: str) -> None:
    """Replace ``final`` with the complete ``staging`` dir by renames (never a half-written dir)."""
    old = final.parent / f".old-{build_id}"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    if old.exists():
        shutil.rmtree(old)

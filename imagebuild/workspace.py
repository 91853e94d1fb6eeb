"""The mutable side of a build (mkosi's Context next to the frozen Recipe), and its resources.

Every build gets an id that tags everything it creates: its work dir, its staging dir, its libvirt
domains. The work dir records the owning process, so that ``clean.clean_stale`` can tell what dead builds
left behind (after a SIGKILL nothing could clean up in-process).
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
from .events import Reporter
from .procs import pid_alive, proc_start_time
from .recipe import Recipe
from .run import run
from .settings import current

DOMAIN_PREFIX = "imagebuild-"


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


def create_work_dir(build_id: str) -> Path:
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    work = root / build_id
    work.mkdir(mode=0o700)
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

"""``invoke clean``: remove what builds that no longer run left behind, whatever layer made it (libvirt
domains, their processes, loop devices, work dirs, unfinished output and stage-cache entries). A build
that dies by SIGKILL cleans up nothing in-process; its work dir's owner record (``workspace``) tells it
apart from a live one. Running it twice is a no-op."""

from __future__ import annotations

import shutil

from .cache import StageCache
from .events import Reporter
from .install.hostgrub import detach_stale
from .paths import cache_root
from .procs import processes_mentioning, stop_processes
from .workspace import DOMAIN_PREFIX, destroy_domains, output_root, owner_alive, remove_tree, socket_dir_for, work_root


def clean_stale(reporter: Reporter) -> list[str]:
    """Remove what builds that no longer run left behind. Returns what was removed."""
    removed: list[str] = []
    root = work_root()
    dead: list[str] = []
    if root.is_dir():
        # a loop device a killed build left attached to its disk (grub on the host: install/hostgrub.py)
        live = {w.resolve() for w in root.iterdir() if w.is_dir() and owner_alive(w)}
        removed += [f"loop device {d}" for d in detach_stale(root.resolve(), live, reporter)]
        for work in sorted(root.iterdir()):
            if work.is_dir() and not owner_alive(work):
                dead.append(work.name)
                for name in destroy_domains(DOMAIN_PREFIX + work.name, reporter):
                    removed.append(f"libvirt domain {name}")
                orphans = processes_mentioning(str(work.resolve()))
                if orphans:
                    stop_processes(orphans)
                    removed.append(f"processes {' '.join(map(str, orphans))}")
                remove_tree(work, reporter)
                removed.append(f"work dir {work}")
                if socket_dir_for(work.name).exists():
                    shutil.rmtree(socket_dir_for(work.name), ignore_errors=True)
    out = output_root()
    if out.is_dir():
        for tmp in sorted(out.glob(".tmp-*")) + sorted(out.glob(".old-*")):
            build_id = tmp.name.split("-", 1)[1]
            if build_id in dead or not (root / build_id).exists():
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(f"unfinished output {tmp}")
    # unfinished stage-cache entries (.tmp-BUILDID-*) of builds that are gone
    def alive(build_id: str) -> bool:
        return (root / build_id).is_dir() and owner_alive(root / build_id)
    for tmp in StageCache(cache_root() / "stages", max_bytes=0).remove_unfinished(alive):
        removed.append(f"unfinished cache entry {tmp}")
    for msg in removed:
        reporter.info(f"cleaned: {msg}")
    return removed

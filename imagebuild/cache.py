"""The stage cache: the outputs of the expensive stages, stored under the hash of everything that
determines them, reused when nothing changed, and a miss that always says what did.

osbuild names each stage's output by the hash of its inputs and commits it to a store by atomic rename;
mkosi's cache decides freshness from the package list alone, so its users ask why it missed. Here:

- an entry is ``stages/STAGE/KEY/``: the stored files and ``meta.json`` (the key's inputs, the build that
  made it, when, each file's sha256 and size). It is written in ``stages/STAGE/.tmp-BUILDID-*`` and
  renamed into place complete, so a SIGKILL at any moment leaves at most a ``.tmp-`` directory, which no
  lookup reads and ``invoke clean`` removes. Two builds of one key: the first rename wins, the second
  finds the entry there and drops its own copy (harmless).
- every file is checked against its sha256 before use; a truncated or altered entry is discarded with
  a warning and rebuilt, never used.
- a miss is explained against the newest entry of the same stage (of the same recipe if there is one):
  the inputs that differ are named (``archive.bookworm-security changed``, ``tools.qemu-img 7.2 → 8.0``).
- the cache keeps under ``IMAGEBUILD_CACHE_MAX`` (default 20G) by evicting the least recently used
  entries; a full disk only means the build goes on without storing, and says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import sha256_file
from .events import NULL_REPORTER, Reporter

META = "meta.json"
SCHEMA = 1


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def key_of(inputs: dict[str, Any]) -> str:
    """A stage's key: sha256 over the canonical JSON of its inputs."""
    return hashlib.sha256(canonical(inputs)).hexdigest()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def describe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """What differs between two stages' inputs, for people: ``customize.disable changed``."""
    a, b = flatten(old), flatten(new)
    changes = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k):
            continue
        if k not in a:
            changes.append(f"{k} added")
        elif k not in b:
            changes.append(f"{k} removed")
        elif isinstance(a[k], str) and isinstance(b[k], str) and len(a[k]) + len(b[k]) < 60:
            changes.append(f"{k} {a[k]} → {b[k]}")
        else:
            changes.append(f"{k} changed")
    if len(changes) > limit:
        changes = changes[:limit] + [f"and {len(changes) - limit} more"]
    return ", ".join(changes) or "nothing differs (the entry was removed or is unreadable)"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)I?B?\s*", text.upper())
    if not m:
        raise ValueError(f"'{text}' is not a size (e.g. 20G, 500M)")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


@dataclass(frozen=True)
class Entry:
    stage: str
    key: str
    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.meta.get("files", {}).values())

    @property
    def origin(self) -> str:
        return f"from build {self.meta.get('build_id', '?')} at {self.meta.get('created', '?')}"


class StageCache:
    def __init__(self, root: Path, *, max_bytes: int, reporter: Reporter = NULL_REPORTER) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.reporter = reporter

    # -- lookups ---------------------------------------------------------------------------------------
    def _dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str, *, verify: bool = True) -> Entry | None:
        """The verified entry for ``key``, or None (a damaged one is removed, with a warning).
        ``verify=False``: the caller runs ``verify`` itself before it trusts a byte (beside other work)."""
        path = self._dir(stage, key)
        meta = _read_meta(path)
        if meta is None:
            return None
        entry = Entry(stage, key, path, meta)
        if verify and not self.verify(entry):
            return None
        meta["last_used"] = time.time()
        _write_meta(path, meta)
        return entry

    def verify(self, entry: Entry) -> bool:
        """Every file of ``entry`` against its size and sha256; a damaged entry is removed, with a warning."""
        for name, info in entry.meta.get("files", {}).items():
            f = entry.path / name
            if not f.is_file() or f.stat().st_size != info["size"] or sha256_file(f) != info["sha256"]:
                self.reporter.info(f"⚠ cache: {entry.stage} entry {entry.key[:12]} is damaged ({name} does not "
                                   "match its sha256): discarded, rebuilding")
                self._remove(entry.path)
                return False
        return True

    @contextlib.contextmanager
    def in_use(self, entry: Entry) -> Iterator[None]:
        """Held while a build reads ``entry`` in place (a qcow2 overlay over its disk): eviction and
        ``--prune`` pass it by."""
        with open(self._use_lock(entry.stage, entry.key), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            try:
                if _read_meta(entry.path) is None:  # evicted between the lookup and the lock
                    raise FileNotFoundError(f"cache entry {entry.stage} {entry.key[:12]} was evicted")
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _use_lock(self, stage: str, key: str) -> Path:
        return self.root / stage / f".{key}.in-use"

    def _remove_unless_in_use(self, e: Entry) -> bool:
        """Remove ``e`` unless a build holds it (``in_use``); the exclusive lock is held while removing."""
        lock = self._use_lock(e.stage, e.key)
        if not lock.exists():
            self._remove(e.path)
            return True
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._remove(e.path)
            lock.unlink(missing_ok=True)
        return True

    def entries(self, stage: str | None = None) -> list[Entry]:
        out = []
        for sdir in sorted(self.root.glob("*")) if self.root.is_dir() else []:
            if not sdir.is_dir() or (stage and sdir.name != stage):
                continue
            for path in sorted(sdir.iterdir()):
                meta = _read_meta(path) if path.is_dir() and not path.name.startswith(".") else None
                if meta is not None:
                    out.append(Entry(sdir.name, path.name, path, meta))
        return out

    def nearest(self, stage: str, recipe: str, inputs: dict[str, Any] | None = None) -> Entry | None:
        """What a miss is explained against: of ``recipe``'s own entries of ``stage`` the newest (what
        changed since its last build); when it has none, the entry of any recipe whose inputs differ from
        ``inputs`` in the fewest places, the newest on a tie. The newest of all would often be another
        recipe's on another install, and the one change that matters would drown in the rest."""
        entries = self.entries(stage)
        own = [e for e in entries if e.meta.get("recipe") == recipe]
        if own or inputs is None:
            return max(own or entries, key=lambda e: e.meta.get("created_ts", 0), default=None)
        new = flatten(inputs)

        def distance(e: Entry) -> tuple[int, float]:
            old = flatten(e.meta.get("inputs", {}))
            return (sum(old.get(k) != new.get(k) for k in set(old) | set(new)), -e.meta.get("created_ts", 0))
        return min(entries, key=distance, default=None)

    def explain_miss(self, stage: str, recipe: str, inputs: dict[str, Any]) -> str:
        near = self.nearest(stage, recipe, inputs)
        if near is None:
            return "no earlier entry for this stage"
        what = describe_changes(near.meta.get("inputs", {}), inputs)
        whose = "" if near.meta.get("recipe") == recipe else f" (nearest: recipe {near.meta.get('recipe')})"
        return f"{what}{whose}"

    # -- writing ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Held while a build makes ``key``: a second build of the same key waits, then reuses it."""
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        with open(self.root / stage / f".{key}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.reporter.info(f"cache: waiting for another build making {stage} {key[:12]}")
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def store(self, stage: str, key: str, *, inputs: dict[str, Any], build_id: str, recipe: str,
              files: dict[str, Callable[[Path], None]], extra: dict[str, Any] | None = None,
              known: dict[str, str] | None = None) -> Entry | None:
        """Make an entry: each ``files[name](dest)`` writes one file; then meta, then one rename. None if
        the entry could not be stored (no space: the build goes on uncached, and says so). ``known``: the
        sha256 of a file the caller hashed as it made it (the artifact), not read again."""
        sdir = self.root / stage
        tmp = sdir / f".tmp-{build_id}-{secrets.token_hex(3)}"
        try:
            tmp.mkdir(parents=True)
            for name, write in files.items():
                write(tmp / name)
            meta = {"schema": SCHEMA, "stage": stage, "key": key, "recipe": recipe, "build_id": build_id,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "created_ts": time.time(),
                    "last_used": time.time(), "inputs": inputs, **(extra or {}),
                    "files": {n: {"sha256": (known or {}).get(n) or sha256_file(tmp / n),
                              "size": (tmp / n).stat().st_size} for n in files}}
            _write_meta(tmp, meta)
            final = self._dir(stage, key)
            try:
                tmp.rename(final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self._remove(tmp)  # another build stored the same key first: same inputs, same output
                lost = True
            else:
                lost = False
            entry = self.lookup(stage, key, verify=lost)  # our own files were hashed just now
        except OSError as exc:
            self._remove(tmp)
            why = "no space left" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            self.reporter.info(f"⚠ cache: could not store {stage} {key[:12]} ({why}): this build goes on "
                               "without caching it")
            return None
        self.evict(keep={key})
        return entry

    def update(self, entry: Entry, **fields: Any) -> None:
        meta = dict(entry.meta, **fields)
        _write_meta(entry.path, meta)
        entry.meta.clear()
        entry.meta.update(meta)

    def add_file(self, entry: Entry, name: str, write: Callable[[Path], None]) -> None:
        """Add a file to an existing entry (e.g. a boot-test console), recorded in its meta."""
        tmp = entry.path / f".{name}.tmp"
        write(tmp)
        tmp.rename(entry.path / name)
        files = dict(entry.meta.get("files", {}))
        files[name] = {"sha256": sha256_file(entry.path / name), "size": (entry.path / name).stat().st_size}
        self.update(entry, files=files)

    # -- size and leftovers ----------------------------------------------------------------------------
    def evict(self, keep: set[str] | None = None) -> list[Entry]:
        """Remove least recently used entries until the cache is under its cap."""
        keep = keep or set()
        entries = sorted(self.entries(), key=lambda e: e.meta.get("last_used", 0))
        total = sum(e.size for e in entries)
        removed = []
        for e in entries:
            if total <= self.max_bytes:
                break
            if e.key in keep or not self._remove_unless_in_use(e):
                continue
            total -= e.size
            removed.append(e)
            self.reporter.info(f"cache: evicted {e.stage} {e.key[:12]} ({e.size / 2**20:.0f} MiB, "
                               f"recipe {e.meta.get('recipe')}) to stay under {self.max_bytes / 2**30:.0f} GiB")
        return removed

    def remove_unfinished(self, alive: Callable[[str], bool]) -> list[Path]:
        """``.tmp-BUILDID-*`` directories of builds that are gone (what a SIGKILL leaves)."""
        removed = []
        for tmp in sorted(self.root.glob("*/.tmp-*")) if self.root.is_dir() else []:
            build_id = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
            if not alive(build_id):
                self._remove(tmp)
                removed.append(tmp)
        return removed

    def _remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("schema") == SCHEMA else None


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path / f".{META}.{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    tmp.rename(path / META)


def link_or_copy(src: Path) -> Callable[[Path], None]:
    """A ``files`` writer: a hard link where the cache and ``src`` share a filesystem (the artifact is
    never written in place: the boot test uses an overlay), else a copy."""
    def write(dest: Path) -> None:
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
    return write

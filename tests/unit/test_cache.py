"""The stage cache (imagebuild/cache.py) on real files, and the stage keys (imagebuild/plan.py)."""

from __future__ import annotations

import dataclasses
import errno
import multiprocessing
import time
from pathlib import Path

import pytest

from imagebuild import customize as cz
from imagebuild.cache import StageCache, describe_changes, key_of, parse_size
from imagebuild.plan import stage_keys
from imagebuild.recipe import load_recipe
from imagebuild.stagecache import _with_archive

pytestmark = pytest.mark.unit
ARCHIVE = {"bookworm": "a" * 64, "bookworm-updates": "b" * 64, "bookworm-security": "c" * 64}


def writer(data: bytes):
    def write(dest: Path) -> None:
        dest.write_bytes(data)
    return write


def make(cache: StageCache, key: str, data: bytes = b"disk", recipe: str = "r", build: str = "r-1",
         inputs: dict | None = None):
    return cache.store("install", key, inputs=inputs or {"k": key}, build_id=build, recipe=recipe,
                       files={"disk.qcow2": writer(data)})


def test_store_then_lookup_verifies_and_a_damaged_entry_is_discarded(tmp_path):
    cache = StageCache(tmp_path, max_bytes=1 << 30)
    entry = make(cache, "k1", b"x" * 1000)
    assert entry is not None and entry.file("disk.qcow2").read_bytes() == b"x" * 1000
    assert cache.lookup("install", "k1") is not None
    entry.file("disk.qcow2").write_bytes(b"x" * 999)  # truncated
    assert cache.lookup("install", "k1") is None
    assert not (tmp_path / "install" / "k1").exists()  # discarded, never used
    make(cache, "k2", b"yyyy")
    (tmp_path / "install" / "k2" / "disk.qcow2").write_bytes(b"zzzz")  # same size, other bytes
    assert cache.lookup("install", "k2") is None


def test_an_interrupted_store_leaves_only_a_tmp_dir_that_clean_removes(tmp_path):
    cache = StageCache(tmp_path, max_bytes=1 << 30)

    def dies(dest: Path) -> None:
        dest.write_bytes(b"half")
        raise KeyboardInterrupt  # a signal mid-write
    with pytest.raises(KeyboardInterrupt):
        cache.store("install", "k", inputs={}, build_id="r-dead", recipe="r", files={"disk.qcow2": dies})
    assert cache.lookup("install", "k") is None and cache.entries() == []
    leftovers = list((tmp_path / "install").glob(".tmp-*"))
    assert len(leftovers) == 1
    assert cache.remove_unfinished(alive=lambda build_id: build_id != "r-dead") == leftovers
    assert cache.remove_unfinished(alive=lambda b: False) == []  # twice: nothing more


def test_a_full_disk_means_no_entry_and_a_warning(tmp_path, capsys):
    from imagebuild.events import Reporter
    cache = StageCache(tmp_path, max_bytes=1 << 30, reporter=Reporter())

    def full(dest: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    assert cache.store("install", "k", inputs={}, build_id="b", recipe="r", files={"disk.qcow2": full}) is None
    said = capsys.readouterr()
    assert "could not store install k (no space left): this build goes on without caching it" in said.out + said.err
    assert list((tmp_path / "install").iterdir()) == []  # not even a .tmp- dir
    assert cache.entries() == []


def _store_same_key(root: str, n: int) -> None:
    cache = StageCache(Path(root), max_bytes=1 << 30)
    make(cache, "same", b"identical output", build=f"r-{n}")


def test_two_builds_storing_one_key_at_once_leave_one_good_entry(tmp_path):
    procs = [multiprocessing.Process(target=_store_same_key, args=(str(tmp_path), n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    cache = StageCache(tmp_path, max_bytes=1 << 30)
    (entry,) = cache.entries()
    assert cache.lookup("install", "same") is not None
    assert entry.file("disk.qcow2").read_bytes() == b"identical output"
    assert list((tmp_path / "install").glob(".tmp-*")) == []


def test_least_recently_used_entries_go_first(tmp_path):
    cache = StageCache(tmp_path, max_bytes=2500)
    for k in ("old", "mid"):
        make(cache, k, b"x" * 1000)
    cache.lookup("install", "old")  # used again: now "mid" is the least recently used
    make(cache, "new", b"x" * 1000)  # 3000 bytes > 2500: one must go
    assert sorted(e.key for e in cache.entries()) == ["new", "old"]


def test_a_miss_names_what_changed(tmp_path):
    cache = StageCache(tmp_path, max_bytes=1 << 30)
    make(cache, "k1", recipe="debian12", inputs={"archive": ARCHIVE, "customize": {"disable": []},
                                                 "tools": {"qemu-img": "7.2"}})
    new = {"archive": {**ARCHIVE, "bookworm-security": "d" * 64}, "customize": {"disable": ["random-seed"]},
           "tools": {"qemu-img": "8.0"}}
    why = cache.explain_miss("install", "debian12", new)
    assert "archive.bookworm-security changed" in why and "customize.disable changed" in why
    assert "tools.qemu-img 7.2 → 8.0" in why
    assert cache.explain_miss("artifact", "debian12", new) == "no earlier entry for this stage"
    assert describe_changes({"a": 1}, {"a": 1, "b": 2}) == "b added"



def test_a_new_recipe_s_miss_is_explained_against_the_closest_entry_not_the_newest(tmp_path):
    """A recipe with no entry of its own: the newest entry may be another recipe's on another install,
    whose five differences would push the one that matters past the list's end."""
    cache = StageCache(tmp_path, max_bytes=1 << 30)
    parent = {"install": "i1", "uuids": {"root": "u1"}, "files": {"a.cfg": "1", "hotplug.cfg": "1"}}
    make(cache, "k1", recipe="debian12", inputs=parent)
    time.sleep(0.01)
    make(cache, "k2", recipe="debian12-bios", inputs={"install": "i2", "uuids": {"root": "u2", "esp": "e2"},
                                                      "files": {"a.cfg": "2", "b.cfg": "1"}, "code": "x"})
    child = {"install": "i1", "uuids": {"root": "u1"}, "files": {"a.cfg": "1"}}
    assert cache.explain_miss("install", "debian12-nohotplug", child) == \
        "files.hotplug.cfg removed (nearest: recipe debian12)"
    # a recipe that has entries of its own is told what changed since its newest one
    assert cache.explain_miss("install", "debian12-bios", child).startswith("code removed, files.a.cfg 2 → 1")

def test_stage_keys_follow_their_inputs():
    r = load_recipe("debian12")
    steps = cz.selected_steps(r)
    base = stage_keys(r, steps, archive=ARCHIVE, qemu_img="qemu-img version 7.2.0")
    assert base is not None
    same = stage_keys(r, steps, archive=dict(ARCHIVE), qemu_img="qemu-img version 7.2.0")
    assert [base.key(s) for s in ("install", "customize", "artifact")] == \
        [same.key(s) for s in ("install", "customize", "artifact")]  # deterministic
    # a customize setting: install stays, customize and the artifact change
    r2 = dataclasses.replace(r, customize=dataclasses.replace(r.customize, disable=("random-seed",)))
    k2 = stage_keys(r2, cz.selected_steps(r2), archive=ARCHIVE, qemu_img="qemu-img version 7.2.0")
    assert k2.key("install") == base.key("install") and k2.key("customize") != base.key("customize")
    assert k2.key("artifact") != base.key("artifact")
    # a package: everything from install on; a security update in the archive likewise
    r3 = dataclasses.replace(r, packages=dataclasses.replace(r.packages, extra=r.packages.extra + ("htop",)))
    assert stage_keys(r3, steps, archive=ARCHIVE, qemu_img="qemu-img version 7.2.0").key("install") != \
        base.key("install")
    moved = stage_keys(r, steps, archive={**ARCHIVE, "bookworm-security": "e" * 64}, qemu_img="qemu-img version 7.2.0")
    assert moved.key("install") != base.key("install") and moved.key("artifact") != base.key("artifact")
    # a new qemu-img: only the artifact
    q = stage_keys(r, steps, archive=ARCHIVE, qemu_img="qemu-img version 8.0.0")
    assert q.key("customize") == base.key("customize") and q.key("artifact") != base.key("artifact")
    assert stage_keys(load_recipe("centos7"), [], archive=None, qemu_img="") is None  # VM installs: not cached


@pytest.mark.parametrize("text, size", [("20G", 20 * 1024**3), ("500M", 500 * 1024**2), ("1024", 1024),
                                        ("2GiB", 2 * 1024**3)])
def test_cache_sizes(text, size):
    assert parse_size(text) == size
    assert key_of({"a": 1, "b": [1, 2]}) == key_of({"b": [1, 2], "a": 1})


def test_a_miss_names_the_input_at_any_depth_of_the_chain(tmp_path):
    r = load_recipe("debian12")
    steps = cz.selected_steps(r)
    base = stage_keys(r, steps, archive=ARCHIVE, qemu_img="7.2")
    cache = StageCache(tmp_path, max_bytes=1 << 30)
    cache.store("artifact", base.key("artifact"), inputs=base.inputs["artifact"], build_id="b1", recipe="debian12",
                files={"artifact.qcow2": writer(b"img")})
    r2 = dataclasses.replace(r, customize=dataclasses.replace(r.customize, disable=("random-seed",)))
    k2 = stage_keys(r2, cz.selected_steps(r2), archive=ARCHIVE, qemu_img="7.2")
    why = cache.explain_miss("artifact", "debian12-child", k2.inputs["artifact"])
    assert "customize.recipe.disable changed" in why and "customize.steps changed" in why
    assert "(nearest: recipe debian12)" in why
    moved = _with_archive(base, {**ARCHIVE, "bookworm-security": "f" * 64})
    assert "install.archive.bookworm-security changed" in cache.explain_miss("artifact", "debian12",
                                                                              moved.inputs["artifact"])
    assert moved.key("install") != base.key("install")


def _cached_install(tmp_path: Path):
    """A stage cache holding one install entry (a real, small qcow2) and a build about to reuse it."""
    import io
    import subprocess
    from contextlib import ExitStack

    from imagebuild.events import Reporter
    from imagebuild.stagecache import INSTALL_DISK, CacheOptions, StageCacheUse
    from imagebuild.workspace import Build

    r = load_recipe("debian12")
    keys = stage_keys(r, cz.selected_steps(r), archive=ARCHIVE, qemu_img="7.2")
    out = io.StringIO()
    rep = Reporter(out)
    cache = StageCache(tmp_path / "stages", max_bytes=1 << 30, reporter=rep)

    def disk(dest: Path) -> None:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(dest), "64M"], check=True)
    cache.store("install", keys.key("install"), inputs=keys.inputs["install"], build_id="b-1", recipe="debian12",
                files={INSTALL_DISK: disk}, extra={"build_inputs": {"root_fs_uuid": "u"}})
    use = StageCacheUse(r, CacheOptions(), rep, cache=cache, keys=keys)
    (tmp_path / "work").mkdir()
    stack = ExitStack()
    b = Build(recipe=r, build_id="b-2", work=tmp_path / "work", output_dir=tmp_path / "out",
              staging=tmp_path / "staging", reporter=rep, stack=stack)
    return cache, use, b, out, keys


def test_a_reused_install_is_an_overlay_held_against_eviction(tmp_path):
    import json as _json
    import subprocess
    cache, use, b, out, keys = _cached_install(tmp_path)
    with b.stack:
        pending = use.reusable_install(b)
        assert pending is not None and b.disk is not None and b.disk_format == "qcow2"
        assert pending.confirm() and b.inputs == {"root_fs_uuid": "u"}
        info = _json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(b.disk)], check=True,
                                          capture_output=True, text=True).stdout)
        entry = cache.lookup("install", keys.key("install"))
        assert entry is not None and info["backing-filename"] == str(entry.file("disk.qcow2"))  # no copy
        assert "install: reused (key " in out.getvalue()
        cache.max_bytes = 0  # over the cap: eviction passes the entry a build is using
        assert cache.evict() == [] and cache.lookup("install", keys.key("install")) is not None
    assert [e.key for e in cache.evict()] == [keys.key("install")]  # the build is over: now it goes


def test_a_damaged_install_found_beside_the_launch_is_discarded_and_the_install_runs(tmp_path):
    cache, use, b, out, keys = _cached_install(tmp_path)
    entry = cache.lookup("install", keys.key("install"))
    assert entry is not None
    with open(entry.file("disk.qcow2"), "r+b") as f:  # one byte changed past the header, same size
        f.seek(-1, 2)
        f.write(b"\xff")
    with b.stack:
        pending = use.reusable_install(b)  # not verified yet: the appliance would be booting on it now
        assert pending is not None
        overlay = b.disk
        assert overlay is not None and overlay.exists()
        assert not pending.confirm()
        assert b.disk is None and not b.disk_from_cache and not overlay.exists()
    assert "is damaged" in out.getvalue() and "install: built (miss: the cached entry was damaged" in out.getvalue()
    assert cache.lookup("install", keys.key("install")) is None


def test_an_install_entry_too_damaged_for_an_overlay_is_discarded_at_once(tmp_path):
    cache, use, b, out, keys = _cached_install(tmp_path)
    entry = cache.lookup("install", keys.key("install"))
    assert entry is not None
    with open(entry.file("disk.qcow2"), "r+b") as f:  # the qcow2 header itself
        f.seek(100)
        f.write(b"\xff")
    with b.stack:
        assert use.reusable_install(b) is None and b.disk is None
    assert "install: built (miss: the cached entry was damaged" in out.getvalue()
    assert cache.lookup("install", keys.key("install")) is None


def test_the_package_cache_follows_the_builds_cache_options(tmp_path):
    """``--no-cache`` is said once, in the CacheOptions: the build's use of the apt package cache is
    derived from them, not kept beside them."""
    import io
    from contextlib import ExitStack

    from imagebuild.events import Reporter
    from imagebuild.stagecache import CacheOptions, StageCacheUse
    from imagebuild.workspace import Build

    r = load_recipe("debian12")
    rep = Reporter(io.StringIO())

    def build(stage_cache: StageCacheUse | None) -> Build:
        return Build(recipe=r, build_id="b-1", work=tmp_path, output_dir=tmp_path, staging=tmp_path,
                     reporter=rep, stack=ExitStack(), stage_cache=stage_cache)

    assert build(None).use_cache
    assert build(StageCacheUse(r, CacheOptions(), rep)).use_cache
    assert not build(StageCacheUse(r, CacheOptions(use=False), rep)).use_cache

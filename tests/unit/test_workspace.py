"""Scratch space (imagebuild/workspace.py)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from types import SimpleNamespace

import pytest

from imagebuild.events import Reporter
from imagebuild.settings import Settings, configure
from imagebuild.workspace import (
    Scratch,
    create_work_dir,
    memory_available,
    owner_alive,
    remove_tree,
    remove_tree_beside,
    scratch_plan,
)

pytestmark = pytest.mark.unit


def test_the_root_tree_is_removed_beside_the_build(tmp_path):
    """The install hands its root tree to a thread (``remove_tree_beside``): gone from its name at once,
    gone from the disk once the build's exit stack has run."""
    tree = tmp_path / "rootfs"
    for i in range(50):
        (tree / f"d{i}").mkdir(parents=True)
        (tree / f"d{i}" / "f").write_text("x")
    with ExitStack() as stack:
        remove_tree_beside(tree, SimpleNamespace(stack=stack, reporter=Reporter()))
        assert not tree.exists()
    assert list(tmp_path.iterdir()) == []


GIB = 1024**3


@pytest.mark.parametrize(("disk_gib", "available", "setting", "keep_work", "tmpfs_gib", "why"), [
    (3, 22 * GIB, "auto", False, 10, "tmpfs of up to 10 GiB, 22.0 GiB of memory available"),
    # the worst case (3 x 3 + 1) and the guests' 4 GiB: 14 GiB, not a byte less
    (3, 14 * GIB, "auto", False, 10, "tmpfs of up to 10 GiB"),
    (3, 14 * GIB - 1, "auto", False, None, "14.0 GiB of memory available, a tmpfs for a 3 GiB disk wants 14 GiB "
                                          "(10 for the work's worst case, 4 for the guests)"),
    (20, 22 * GIB, "auto", False, None, "wants 65 GiB"),
    (3, 22 * GIB, "off", False, None, "IMAGEBUILD_WORK_TMPFS=off"),
    (3, 22 * GIB, "auto", True, None, "--keep-work keeps it for reading after the build"),
])
def test_the_work_dir_is_in_memory_only_when_its_worst_case_fits(disk_gib, available, setting, keep_work,
                                                                  tmpfs_gib, why):
    plan = scratch_plan(disk_gib, setting=setting, keep_work=keep_work, available=available)
    assert plan.tmpfs_bytes == (tmpfs_gib * GIB if tmpfs_gib else None)
    assert plan.where == ("tmpfs" if tmpfs_gib else "disk")
    assert why in plan.reason


def test_memory_available_is_the_kernels_estimate():
    line = next(x for x in open("/proc/meminfo") if x.startswith("MemAvailable:"))
    assert abs(memory_available() - int(line.split()[1]) * 1024) < 256 * 1024**2


def _mounts_at(path) -> list[str]:
    return [line.split()[0] for line in open("/proc/self/mounts") if line.split()[1] == str(path)]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (as builds do)")
def test_a_work_dir_in_memory_is_a_tmpfs_of_the_planned_size_and_goes_with_the_work_dir(tmp_path):
    """The mount is real: a tmpfs of the plan's size under IMAGEBUILD_WORK, holding the owner record, and
    ``remove_tree`` (what a build's exit and ``clean`` call) unmounts it and removes the dir."""
    configure(Settings.from_environ({"IMAGEBUILD_WORK": str(tmp_path / "work")}))
    try:
        work = create_work_dir("t-20261207T000000-abcdef", Scratch(64 * 1024**2, "test"), Reporter())
        assert _mounts_at(work) == ["imagebuild-work"]
        st = os.statvfs(work)
        assert st.f_blocks * st.f_frsize == 64 * 1024**2
        assert (work / "owner.json").exists() and owner_alive(work)
        (work / "rootfs").mkdir()
        (work / "rootfs" / "f").write_bytes(b"x" * 4096)
        remove_tree(work, Reporter())
        assert _mounts_at(work) == [] and not work.exists()
        # on disk: no mount at all
        work = create_work_dir("t-20261207T000000-fedcba", Scratch(None, "test"), Reporter())
        assert _mounts_at(work) == [] and (work / "owner.json").exists()
    finally:
        configure(None)

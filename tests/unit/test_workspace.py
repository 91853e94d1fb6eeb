"""Scratch space (imagebuild/workspace.py)."""

from __future__ import annotations

from contextlib import ExitStack
from types import SimpleNamespace

import pytest

from imagebuild.events import Reporter
from imagebuild.workspace import remove_tree_beside

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

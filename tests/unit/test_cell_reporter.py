"""Lines of cells booted at once carry their cell's tag and leave the shared reporter's nesting alone."""

from __future__ import annotations

import io
import threading

import pytest

from imagebuild.events import CellReporter, Reporter

pytestmark = pytest.mark.unit


def test_each_cell_tags_its_lines_and_steps_without_nesting_the_parent(tmp_path):
    out = io.StringIO()
    parent = Reporter(out)
    parent.attach(tmp_path / "build.log", tmp_path / "events.jsonl")

    def cell(tag: str) -> None:
        rep = CellReporter(parent, tag)
        with rep.step(f"cell {tag}"):
            rep.info("booting")
            rep.log("a log line")

    with parent.step("boot-test", stage=True):
        threads = [threading.Thread(target=cell, args=(t,)) for t in ("bios/pc", "uefi/q35")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parent.info("after the cells")
    parent.close()
    lines = out.getvalue().splitlines()
    for tag in ("bios/pc", "uefi/q35"):
        assert f"  [{tag}] ▶ cell {tag}" in lines and f"  [{tag}] booting" in lines
        assert any(ln.startswith(f"  [{tag}] ✓ cell {tag} (") for ln in lines)
    assert "  after the cells" in lines  # the parent's depth is as it was
    assert "[bios/pc] a log line" in (tmp_path / "build.log").read_text()
    assert set(parent.stage_seconds) == {"boot-test"}

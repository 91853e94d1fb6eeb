"""A boot-test cell that fails keeps its console and a screenshot, named by cell, reports every cell
of the matrix, and leaves no domain, overlay or VARS copy behind (real libvirt, real OVMF)."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from pathlib import Path

import pytest

from imagebuild.boottest import boot_test
from imagebuild.errors import BootTestFailed
from imagebuild.events import Reporter
from imagebuild.recipe import BootFirmware, Cell, Machine, load_recipe

from .test_interrupts import our_domains

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("parallel", [1, 2], ids=["one-after-another", "side-by-side"])
def test_failed_cells_keep_console_and_screenshot_and_leave_nothing(tmp_path: Path, accel, parallel) -> None:
    blank = tmp_path / "blank.qcow2"  # no OS at all: no firmware finds anything to boot
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True)
    base = load_recipe("debian12")
    recipe = dataclasses.replace(base, boot_test=dataclasses.replace(base.boot_test, timeout_seconds=15,
                                                                     tcg_factor=2, parallel=parallel))
    out = io.StringIO()
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    cells = (Cell(BootFirmware.UEFI, Machine.Q35), Cell(BootFirmware.BIOS, Machine.PC))
    with pytest.raises(BootTestFailed) as e:
        boot_test(blank, recipe, accel=accel, work=work, name="imagebuild-matrixtest", logs=logs,
                  reporter=Reporter(out), cells=cells)
    msg = str(e.value)
    assert "failed in 2 of 2 cell(s)" in msg and "uefi/q35: boot:" in msg and "bios/pc: boot:" in msg
    result = e.value.result
    assert [c.cell for c in result.cells] == ["uefi/q35", "bios/pc"]  # the second cell ran after the first failed
    for c in result.cells:
        assert not c.passed and c.seconds_to_agent is None
        assert "agent did not answer" in c.checks[-1].detail
    # OVMF and SeaBIOS each said something on the serial console or screen; both are kept, by cell
    assert (logs / "boot-console-uefi-q35.log").exists() and (logs / "boot-console-bios-pc.log").exists()
    assert (logs / "boot-screen-uefi-q35.ppm").stat().st_size > 0
    assert (logs / "boot-screen-bios-pc.ppm").stat().st_size > 0
    assert our_domains("imagebuild-matrixtest") == []
    assert list(work.iterdir()) == []  # overlays and VARS copies are gone
    if parallel > 1:  # each cell's lines carry its tag, as the two guests ran at once
        text = out.getvalue()
        assert "booting 2 cells at a time" in text
        assert "[uefi/q35] ▶ cell 1/2 uefi/q35" in text and "[bios/pc] ▶ cell 2/2 bios/pc" in text

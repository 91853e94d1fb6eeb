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


def test_a_silent_console_is_a_stall_booted_again_then_failed(tmp_path: Path, accel) -> None:
    """SeaBIOS finds nothing to boot on a blank disk and writes nothing to the serial console: the stall
    watch sees a silent console, destroys the guest, keeps its console, boots the cell once more on a
    fresh overlay and MAC, and fails it when that stalls too, long before the boot timeout."""
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True)
    base = load_recipe("debian12")
    recipe = dataclasses.replace(base, boot_test=dataclasses.replace(
        base.boot_test, timeout_seconds=300, tcg_factor=1, stall_seconds=10, stall_retries=1))
    out = io.StringIO()
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    with pytest.raises(BootTestFailed) as e:
        boot_test(blank, recipe, accel=accel, work=work, name="imagebuild-stalltest", logs=logs,
                  reporter=Reporter(out), cells=(Cell(BootFirmware.BIOS, Machine.PC),))
    (cell,) = e.value.result.cells
    assert not cell.passed and cell.seconds < 120  # not the 300 s timeout: two 10 s stalls and two boots
    assert "the console was silent for 10s before the guest agent answered" in cell.checks[-1].detail
    assert len(cell.stalled) == 1 and "console kept as boot-console-bios-pc-stalled-1.log" in cell.stalled[0]
    assert cell.mac not in cell.stalled[0]  # the retry booted with a fresh MAC
    assert (logs / "boot-console-bios-pc-stalled-1.log").exists() and (logs / "boot-console-bios-pc.log").exists()
    assert "booting the cell again on a fresh overlay and MAC (retry 1 of 1)" in out.getvalue()
    assert our_domains("imagebuild-stalltest") == []
    assert list(work.iterdir()) == []

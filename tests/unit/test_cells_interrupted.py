"""An interrupt of cells booting side by side stops them all: a cell that was still writing its seed when
the interrupt came starts no guest, and the boot test's domains are swept until every worker is done
(the CI run of 2026-12-06 hung when the second cell defined its domain after the only sweep). The
libvirt sweep is recorded instead of run here; the VM tier interrupts a real build."""

from __future__ import annotations

import _thread
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from imagebuild.boottest import cell, matrix
from imagebuild.errors import BootTestFailed
from imagebuild.events import NULL_REPORTER

pytestmark = pytest.mark.unit


def test_an_interrupt_stops_a_cell_that_had_not_started_its_guest(monkeypatch):
    sweeps: list[float] = []
    monkeypatch.setattr(matrix, "destroy_domains", lambda name, rep: sweeps.append(time.monotonic()) or [])
    started: list[str] = []
    finished: dict[str, float] = {}

    def one(title: str, plan: object, rep: object, stop: threading.Event | None = None):
        assert stop is not None
        if title == "booted":
            stop.wait(10)  # its guest is running until the sweep destroys it
        else:
            time.sleep(1.5)  # still writing its seed when the interrupt comes
            try:
                cell._not_stopped(stop)
                started.append(title)
            except BootTestFailed:
                pass
        finished[title] = time.monotonic()

    plan = SimpleNamespace(cell=SimpleNamespace(slug="bios-pc"), slug="bios-pc")
    # Python's own SIGINT handler, whatever an earlier test in this process left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            matrix._side_by_side([("booted", plan), ("late", plan)], one, 2, "ib-test", NULL_REPORTER)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert started == []
    assert set(finished) == {"booted", "late"}
    assert sweeps and sweeps[-1] >= finished["late"]  # swept again after the late cell was done

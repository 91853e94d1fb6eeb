"""``Guest.side_by_side``: the shell it sends runs the groups at once and each group's commands in
order, and every group's status and output come back apart. The script is run by a real ``sh`` here
(the appliance would run the same text inside the image)."""

from __future__ import annotations

import glob
import subprocess
import time

import pytest

from imagebuild.events import NULL_REPORTER
from imagebuild.guest import Guest

pytestmark = pytest.mark.unit


class HostShell:
    """Stands in for the libguestfs handle: ``command`` runs the argv on this host."""

    def command(self, argv: list[str]) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_groups_run_at_once_each_in_order_and_report_apart():
    before = set(glob.glob("/tmp/imagebuild-group.*"))
    guest = Guest(HostShell(), reporter=NULL_REPORTER)
    t = time.monotonic()
    res = guest.side_by_side({
        "first": [["sh", "-c", "sleep 1; echo one"], ["echo", "two words"]],
        "second": [["sh", "-c", "sleep 1; echo other >&2"]],
    })
    assert time.monotonic() - t < 1.9  # both groups slept at the same time
    assert res["first"].rc == 0 and res["first"].output.split("\n")[:2] == ["one", "two words"]
    assert res["second"].rc == 0 and res["second"].output.strip() == "other"
    assert res["first"].argv == "sh -c 'sleep 1; echo one' && echo 'two words'"
    assert set(glob.glob("/tmp/imagebuild-group.*")) == before  # its scratch dir is gone


def test_a_group_stops_at_its_first_failure_and_says_so():
    res = Guest(HostShell(), reporter=NULL_REPORTER).side_by_side({
        "fails": [["sh", "-c", "echo broke; exit 3"], ["echo", "never"]],
        "fine": [["true"]],
    })
    assert res["fails"].rc == 3 and "broke" in res["fails"].output and "never" not in res["fails"].output
    assert res["fine"].rc == 0

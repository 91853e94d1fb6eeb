"""The cloud checks' reading of what cloud-init leaves in /run/cloud-init (status.json, result.json,
instance-data.json), which they read in place of `cloud-init analyze` and `cloud-init query` (each a
Python start of seconds under emulation). The agent here answers from a dict of files: a stand-in for the
guest, named as such; the VM tier runs the same checks in real guests."""

from __future__ import annotations

import json
import time

import pytest

from imagebuild.boottest.checks import CHECKS, CheckContext
from imagebuild.boottest.checks.cloud import INSTANCE_DATA, RESULT_JSON, STATUS_JSON
from imagebuild.boottest.seeds import SeedRequest
from imagebuild.recipe import Cell, SeedKind, load_recipe

pytestmark = pytest.mark.unit

IID = "2cb5c07c-f460-4578-8eb9-ba3a73a811a0"
DS = "DataSourceConfigDrive [net,ver=2][source=/dev/sr0]"
# as cloud-init 22.4 (Debian 12) writes them, trimmed
STATUS = {"v1": {"datasource": DS, "stage": None,
                 "init-local": {"errors": [], "start": 100.0, "finished": 102.1},
                 "init": {"errors": [], "start": 110.0, "finished": 119.6},
                 "modules-config": {"errors": [], "start": 121.0, "finished": 126.4},
                 "modules-final": {"errors": [], "start": 127.0, "finished": 129.3}}}
RESULT = {"v1": {"datasource": DS, "errors": []}}


class FilesGuest:
    """A stand-in for the guest agent (not the real one): `cat PATH` answers from ``files``, the
    cloud-init CLI with ``status``, anything else with nothing."""

    def __init__(self, files: dict[str, object], status: str = "done") -> None:
        self.files = {k: v if isinstance(v, str) else json.dumps(v) for k, v in files.items()}
        self.status = status

    def exec(self, argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
        if argv[0] == "cat":
            if argv[1] in self.files:
                return 0, self.files[argv[1]], ""
            return 1, "", f"cat: {argv[1]}: No such file or directory"
        if "cloud-init" in argv:
            return 0, f"status: {self.status}\n", ""
        return 0, "0\n", ""


def ctx() -> CheckContext:
    recipe = load_recipe("debian12")
    req = SeedRequest(SeedKind.NOVA, IID, "ib-bios-pc-2d45", "ssh-ed25519 AAAA test", "52:54:00:17:37:88", "debian")
    return CheckContext(recipe=recipe, mac=req.mac, deadline=time.monotonic() + 60, cell=Cell.parse("bios/pc"),
                        seed=SeedKind.NOVA, seed_request=req)


def test_status_reads_each_stage_as_analyze_names_it() -> None:
    c = ctx()
    check = CHECKS["cloud-init-status"].run(FilesGuest({STATUS_JSON: STATUS, RESULT_JSON: RESULT}), c)
    assert check.ok, check.detail
    assert c.facts["cloud_init_stages"] == {"init-local": 2.1, "init-network": 9.6, "modules-config": 5.4,
                                            "modules-final": 2.3}


def test_status_fails_on_a_stage_error_or_a_missing_file() -> None:
    bad = json.loads(json.dumps(STATUS))
    bad["v1"]["modules-config"]["errors"] = ["('ssh', RuntimeError('boom'))"]
    check = CHECKS["cloud-init-status"].run(FilesGuest({STATUS_JSON: bad, RESULT_JSON: RESULT}), ctx())
    assert not check.ok and "boom" in check.detail
    check = CHECKS["cloud-init-status"].run(FilesGuest({RESULT_JSON: RESULT}), ctx())
    assert not check.ok and STATUS_JSON in check.detail
    check = CHECKS["cloud-init-status"].run(FilesGuest({STATUS_JSON: STATUS, RESULT_JSON: "{"}), ctx())
    assert not check.ok and "result.json unreadable" in check.detail


def test_datasource_reads_the_instance_id_query_would_print() -> None:
    files = {RESULT_JSON: RESULT, INSTANCE_DATA: {"v1": {"instance_id": IID, "cloud_name": "openstack"}}}
    check = CHECKS["datasource"].run(FilesGuest(files), ctx())
    assert check.ok and IID in check.detail, check.detail
    files[INSTANCE_DATA] = {"v1": {"instance_id": "iid-datasource-none"}}
    check = CHECKS["datasource"].run(FilesGuest(files), ctx())
    assert not check.ok and f"carries ConfigDrive, {IID}" in check.detail
    del files[INSTANCE_DATA]  # the file missing is named, not just a '?'
    check = CHECKS["datasource"].run(FilesGuest(files), ctx())
    assert not check.ok and f"{INSTANCE_DATA}: cat:" in check.detail, check.detail

"""The session's real `invoke build debian12` (tests/conftest.py), published to the real Glance and,
through the real ovirt-imageio, to the oVirt engine double.

Runs with the build tier (and the default CI run), not with -m publish."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from ovirt_engine_double import EngineDouble  # noqa: I001

from imagebuild.events import Reporter
from imagebuild.publish import Options, publish

pytestmark = pytest.mark.build  # not "publish": that tier must not trigger a full build


def test_the_real_build_publishes_to_glance_and_ovirt(built_debian12: Path, glance, cloud, imageio,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "debian12"  # hard links: the session's build folder stays as the build left it
    shutil.copytree(built_debian12, out, copy_function=os.link)
    (out / "published.jsonl").unlink(missing_ok=True)
    reporter = Reporter(stream=open(os.devnull, "w"))  # noqa: SIM115
    result = publish("debian12", out, to="glance", options=Options(cloud=cloud), reporter=reporter)
    assert result.created and result.name.startswith("debian12-v12-")
    stored = glance.images_dir / result.image_id
    assert stored.stat().st_size == (out / "debian12.qcow2").stat().st_size
    assert not publish("debian12", out, to="glance", options=Options(cloud=cloud), reporter=reporter).created

    with EngineDouble(imageio, tmp_path / "sd", username="admin@internal", password="pw",
                      storage_domain="images") as engine:
        conf = tmp_path / "ovirt.conf"
        conf.write_text(f"[t]\nengine_url = {engine.url}\nusername = admin@internal\npassword = pw\n"
                        f"cafile = {imageio.ca}\nstorage_domain = images\n")
        conf.chmod(0o600)
        monkeypatch.setenv("OVIRT_CONFIG_FILE", str(conf))
        disk = publish("debian12", out, to="ovirt", options=Options(ovirt_config="t"), reporter=reporter)
        volume = engine.state.disks[disk.image_id].path
        size = (out / "debian12.qcow2").stat().st_size
        with open(volume, "rb") as f:
            assert hashlib.sha256(f.read(size)).hexdigest() == hashlib.sha256(
                (out / "debian12.qcow2").read_bytes()).hexdigest()

"""Publishing to oVirt: the real ovirt-imageio daemon on the data path, the engine's REST bookkeeping
played by ``ovirt_engine_double.EngineDouble`` (a test double: the Java engine cannot run here)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeBuild, recipe_for
from ovirt_engine_double import EngineDouble

from imagebuild.errors import PublishError
from imagebuild.events import Reporter
from imagebuild.publish import Options, publish
from imagebuild.publish.ovirt import load_engine
from imagebuild.recipe import Ovirt

pytestmark = pytest.mark.publish
ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "publish_child.py"
PASSWORD = "Ovirt-Canary-Secret-42"


@pytest.fixture
def engine(imageio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineDouble]:
    with EngineDouble(imageio, tmp_path / "storage-domain", username="admin@internal",
                      password=PASSWORD, storage_domain="images") as double:
        conf = tmp_path / "ovirt.conf"
        conf.write_text(f"[test-engine]\nengine_url = {double.url}\nusername = admin@internal\n"
                        f"password = {PASSWORD}\ncafile = {imageio.ca}\n")
        conf.chmod(0o600)
        monkeypatch.setenv("OVIRT_CONFIG_FILE", str(conf))
        yield double


def reporter(tmp_path: Path) -> Reporter:
    r = Reporter(stream=open(tmp_path / "terminal.txt", "a"), verbose=True)  # noqa: SIM115
    r.attach(tmp_path / "publish.log", tmp_path / "events.jsonl")
    return r


def no_secret(tmp_path: Path) -> None:
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in (".txt", ".log", ".jsonl", ".json"):
            assert PASSWORD not in f.read_text(errors="replace"), f


def test_publish_sends_the_tested_bytes_through_imageio(engine: EngineDouble, imageio, make_build: MakeBuild,
                                                        tmp_path: Path) -> None:
    recipe = recipe_for("o-disk")
    out = make_build(recipe, data_mib=3)
    qcow2 = out / "o-disk.qcow2"
    result = publish(recipe, out, to="ovirt", options=Options(ovirt_config="test-engine"),
                     reporter=reporter(tmp_path))
    assert result.created and result.method == "imageio"
    disk = engine.state.disks[result.image_id]
    assert disk.status == "ok" and disk.name == result.name == "o-disk-v12-20261127T073000-ab12cd"
    assert f"sha256={hashlib.sha256(qcow2.read_bytes()).hexdigest()}" in disk.description
    assert disk.format == "cow" and disk.storage_domain == "images"
    # The volume written by the real ovirt-imageio holds exactly the tested qcow2.
    assert hashlib.sha256(disk.path.read_bytes()[:qcow2.stat().st_size]).hexdigest() == \
        hashlib.sha256(qcow2.read_bytes()).hexdigest()
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(qcow2), str(disk.path)],
                          capture_output=True).returncode == 0
    calls = [c for c in engine.state.calls if "imagetransfers" in c and c.startswith("POST")]
    assert calls[0].endswith("/imagetransfers") and calls[-1].endswith("/finalize")
    no_secret(tmp_path)

    again = publish(recipe, out, to="ovirt", options=Options(ovirt_config="test-engine"),
                    reporter=reporter(tmp_path))
    assert not again.created and again.image_id == result.image_id and len(engine.state.disks) == 1


def test_a_failed_verification_removes_the_disk(engine: EngineDouble, make_build: MakeBuild,
                                               tmp_path: Path) -> None:
    engine.state.fail_finalize = True
    recipe = recipe_for("o-fail")
    out = make_build(recipe)
    with pytest.raises(PublishError, match="image transfer .* failed"):
        publish(recipe, out, to="ovirt", options=Options(ovirt_config="test-engine"),
                reporter=reporter(tmp_path))
    assert engine.state.disks == {}
    assert list((tmp_path / "storage-domain").iterdir()) == []


def test_an_interrupted_upload_cancels_the_transfer_and_removes_the_disk(
        engine: EngineDouble, imageio, make_build: MakeBuild, tmp_path: Path) -> None:
    recipe = recipe_for("o-interrupt")
    out = make_build(recipe, data_mib=16)
    recipe_json = tmp_path / "recipe.json"
    recipe_json.write_text(recipe.to_json())
    events = tmp_path / "child.events"
    proc = subprocess.Popen([sys.executable, str(CHILD), str(out), str(recipe_json), "ovirt",
                             "--ovirt-config", "test-engine", "--rate", str(6 * 2**20),
                             "--events", str(events)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not (events.exists() and '"what": "upload"' in events.read_text()
               and any(json.loads(line).get("done", 0) > 2**20 for line in events.read_text().splitlines()
                       if '"upload"' in line)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    ticket = next(iter(engine.state.transfers.values())).ticket
    assert imageio.get_ticket(ticket) is not None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert engine.state.disks == {}
    assert imageio.get_ticket(ticket) is None
    assert list((tmp_path / "storage-domain").iterdir()) == []


def test_template_from_the_uploaded_disk(engine: EngineDouble, make_build: MakeBuild, tmp_path: Path) -> None:
    base = recipe_for("o-template")
    recipe = dataclasses.replace(base, publish=dataclasses.replace(
        base.publish, ovirt=Ovirt(storage_domain="images", template=True)))
    out = make_build(recipe)
    result = publish(recipe, out, to="ovirt", options=Options(ovirt_config="test-engine"),
                     reporter=reporter(tmp_path))
    (template,) = engine.state.templates.values()
    assert result.extra["template_id"] == template["id"] and template["name"] == result.name
    assert template["disks"] == [result.image_id]
    assert engine.state.vms == {}  # the helper VM is gone, the disk stays
    assert engine.state.disks[result.image_id].status == "ok"
    assert template["initialization"] is None  # no Initial Run unless the recipe asks for one


@pytest.mark.parametrize("cloud", [True, False])
def test_template_with_a_default_initial_run(engine: EngineDouble, make_build: MakeBuild, tmp_path: Path,
                                            cloud: bool) -> None:
    """initial_run: the template's Initial Run gives the default user the VM's key (cloud-init, fresh host
    keys); an image without cloud-init gets none, and the publish says why."""
    base = recipe_for(f"o-initial-run-{cloud}")
    recipe = dataclasses.replace(base, cloud=dataclasses.replace(base.cloud, enabled=cloud),
                                 publish=dataclasses.replace(base.publish, ovirt=Ovirt(
                                     storage_domain="images", template=True, initial_run=True)))
    result = publish(recipe, make_build(recipe), to="ovirt", options=Options(ovirt_config="test-engine"),
                     reporter=reporter(tmp_path))
    template = engine.state.templates[result.extra["template_id"]]
    log = (tmp_path / "publish.log").read_text()
    if cloud:
        assert template["initialization"] == {"user_name": "debian", "regenerate_ssh_keys": "true"}
        assert template["os_type"] == "other_linux"  # the engine runs cloud-init for a Linux guest
        assert "whose Initial Run sets up debian with cloud-init" in log
    else:
        assert template["initialization"] is None and template["os_type"] == "other"
        assert "the template gets no Initial Run" in log


@pytest.mark.unit
def test_engine_settings_come_from_config_or_environment(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    conf = tmp_path / "ovirt.conf"
    conf.write_text(f"[prod]\nengine_url = https://engine.example\nusername = u\npassword = {PASSWORD}\n"
                    f"cafile = {ca}\nstorage_domain = data1\n")
    monkeypatch.setenv("OVIRT_CONFIG_FILE", str(conf))
    conf.chmod(0o644)
    with pytest.raises(PublishError, match="readable by others: chmod 600"):
        load_engine("prod", Ovirt())
    conf.chmod(0o600)
    e = load_engine("prod", Ovirt())
    assert e.url == "https://engine.example/ovirt-engine/api" and e.storage_domain == "data1"
    assert PASSWORD not in repr(e) and PASSWORD not in str(e)
    assert load_engine("prod", Ovirt(storage_domain="fast")).storage_domain == "fast"
    with pytest.raises(PublishError, match=r"no section \[dev\]"):
        load_engine("dev", Ovirt())
    for var in ("OVIRT_URL", "OVIRT_USERNAME", "OVIRT_PASSWORD", "OVIRT_CAFILE", "OVIRT_STORAGE_DOMAIN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(PublishError, match="engine_url, username, password, cafile missing") as err:
        load_engine(None, Ovirt())
    assert PASSWORD not in str(err.value)
    monkeypatch.setenv("OVIRT_URL", "http://engine.example")
    monkeypatch.setenv("OVIRT_USERNAME", "u")
    monkeypatch.setenv("OVIRT_PASSWORD", PASSWORD)
    monkeypatch.setenv("OVIRT_CAFILE", str(ca))
    with pytest.raises(PublishError, match="must be https"):
        load_engine(None, Ovirt(storage_domain="x"))


def _spawn_child(out: Path, recipe, tmp_path: Path, tag: str) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    recipe_json = tmp_path / f"recipe-{tag}.json"
    recipe_json.write_text(recipe.to_json())
    return subprocess.Popen([sys.executable, str(CHILD), str(out), str(recipe_json), "ovirt",
                             "--ovirt-config", "test-engine", "--rate", str(6 * 2**20),
                             "--events", str(tmp_path / f"child-{tag}.events")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_simultaneous_publishes_make_one_disk(engine: EngineDouble, make_build: MakeBuild,
                                              tmp_path: Path) -> None:
    recipe = recipe_for("o-race")
    out = make_build(recipe, data_mib=8)
    procs = [_spawn_child(out, recipe, tmp_path, tag) for tag in "ab"]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout.splitlines()[0]))
    assert results[0]["image_id"] == results[1]["image_id"]
    assert sorted(r["created"] for r in results) == [False, True]
    [disk] = engine.state.disks.values()
    assert disk.id == results[0]["image_id"] and disk.status == "ok"
    assert disk.description.endswith(" complete")


def _forge_disk(engine: EngineDouble, out: Path, uploader: str):  # type: ignore[no-untyped-def]
    """A disk of the artifact in ``out`` as another publish left it (``uploader``: the rest of its
    description), once the double has unlocked it."""
    import xml.etree.ElementTree as ET

    from imagebuild.publish.gate import load_published_artifact

    artifact = load_published_artifact(out)
    body = ET.fromstring(
        f"<disk><name>{artifact.versioned_name}</name><provisioned_size>1</provisioned_size>"
        f"<description>imagebuild sha256={artifact.sha256} {uploader}</description>"
        "<storage_domains><storage_domain><name>images</name></storage_domain></storage_domains></disk>")
    with engine.lock:
        disk = engine.add_disk(body)
    time.sleep(0.5)  # the double unlocks a new disk after 0.3 s
    return disk


def test_a_gone_publishers_disk_is_removed(engine: EngineDouble, make_build: MakeBuild, tmp_path: Path) -> None:
    """A disk a killed publish left (never marked complete; its process is gone) is not the artifact."""
    import socket

    from imagebuild.procs import boot_id

    recipe = recipe_for("o-gone")
    out = make_build(recipe)
    leftover = _forge_disk(engine, out, f"uploader={socket.gethostname()}/{boot_id()}/4194303/1 "
                                        f"started={time.time():.3f}").id  # that pid does not run
    result = publish(recipe, out, to="ovirt", options=Options(ovirt_config="test-engine"),
                     reporter=reporter(tmp_path))
    assert result.created and list(engine.state.disks) == [result.image_id] != [leftover]
    assert "left ok by a publish that is gone" in (tmp_path / "publish.log").read_text()


def test_a_finished_disk_the_engine_has_locked_is_waited_for_not_removed(engine: EngineDouble,
                                                                         make_build: MakeBuild,
                                                                         tmp_path: Path) -> None:
    """Its publisher is gone, but the disk is complete: while the engine holds it (making a template),
    a second publish waits and then uses it."""
    import threading

    recipe = recipe_for("o-locked")
    out = make_build(recipe)
    disk = _forge_disk(engine, out, f"uploader=gone-host/b00t/4242/1 started={time.time() - 3600:.3f} complete")
    disk.status = "locked"
    threading.Timer(4, lambda: setattr(disk, "status", "ok")).start()
    result = publish(recipe, out, to="ovirt", options=Options(ovirt_config="test-engine"),
                     reporter=reporter(tmp_path))
    assert not result.created and result.image_id == disk.id and list(engine.state.disks) == [disk.id]
    assert "waiting for it" in (tmp_path / "publish.log").read_text()

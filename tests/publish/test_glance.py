"""Publishing real qcow2 files to a real Glance (glance 33 under gunicorn on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLOUD, MakeBuild, glance_conn, recipe_for

from imagebuild.errors import PublishError
from imagebuild.events import Reporter
from imagebuild.procs import process_token
from imagebuild.publish import Options, publish
from imagebuild.publish.gate import load_published_artifact
from imagebuild.publish.glance import UNFINISHED, publish_to_glance

pytestmark = pytest.mark.publish
ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "publish_child.py"


def images_of(glance, **filters: str) -> list[dict]:  # type: ignore[no-untyped-def]
    conn = glance_conn(glance)
    try:
        resp = conn.image.get("/images", params={"limit": 1000, **filters})
        return resp.json()["images"]
    finally:
        conn.close()


def quiet_reporter(tmp_path: Path) -> Reporter:
    r = Reporter(stream=open(os.devnull, "w"))  # noqa: SIM115
    r.attach(tmp_path / "publish.log", tmp_path / "events.jsonl")
    return r


@pytest.mark.parametrize("method", ["auto", "upload"])
def test_publish_describes_the_image_and_matches_sha512(glance, cloud, make_build: MakeBuild,
                                                       tmp_path: Path, method: str) -> None:
    recipe = recipe_for(f"t-props-{method}", visibility="public", tags=("golden", "ci"),
                        properties={"hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi"}, method=method)
    out = make_build(recipe, virtual_mib=1536)
    manifest = json.loads((out / "manifest.json").read_text())
    result = publish(recipe, out, to="glance", options=Options(cloud=cloud),
                     reporter=quiet_reporter(tmp_path))

    assert result.created and not result.forced
    assert result.method == ("glance-direct" if method == "auto" else "upload")
    conn = glance_conn(glance)
    img = conn.image.get_image(result.image_id)
    props = conn.image.get(f"/images/{result.image_id}").json()  # as Glance returns it: properties flat
    assert img.status == "active"
    assert (img.disk_format, img.container_format, img.visibility) == ("qcow2", "bare", "public")
    assert img.name == f"t-props-{method}-v12-20261127T073000-ab12cd" == result.name
    assert img.hash_algo == "sha512" and img.hash_value == manifest["artifact"]["sha512"]
    assert img.size == manifest["artifact"]["file_size"]
    assert img.min_disk == math.ceil(manifest["artifact"]["virtual_size"] / 2**30) == 2
    assert img.min_ram == 512
    assert sorted(img.tags) == ["ci", "golden"]
    assert props["os_distro"] == "debian" and props["os_version"] == "12" and props["os_type"] == "linux"
    assert props["hw_disk_bus"] == "scsi" and props["hw_scsi_model"] == "virtio-scsi"  # recipe override
    assert props["hw_vif_model"] == "virtio" and props["hw_qemu_guest_agent"] == "yes"
    assert props["hw_machine_type"] == "pc" and props["hw_firmware_type"] == "bios"
    # a cloud image: Nova's set-password acts on the default user; every passed cell froze and thawed
    assert props["os_admin_user"] == "debian" and props["os_require_quiesce"] == "yes"
    manifest_digest = __import__("hashlib").sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert {k: v for k, v in props.items() if k.startswith("imagebuild")} == {
        "imagebuild_recipe": recipe.name, "imagebuild_recipe_version": "12",
        "imagebuild_build_id": manifest["build_id"], "imagebuild_built": manifest["finished"],
        "imagebuild_sha256": manifest["artifact"]["sha256"], "imagebuild_manifest_sha256": manifest_digest,
        "imagebuild_boot_test": "passed", "imagebuild_forced": "false",
        "imagebuild_boot_matrix": "bios/pc+nova,bios/q35+ovirt,uefi/q35+nocloud,secure-boot/q35",
        "imagebuild_live_checks": "vcpu-hotplug,memory-hotplug,balloon,fsfreeze",
        "imagebuild_cloud_seeds": "nocloud,nova,ovirt",
        "imagebuild_uploader": process_token()}  # this process published it
    assert "os_secure_boot" not in props  # a hybrid image advertises BIOS unless the recipe says otherwise
    record = [json.loads(line) for line in (out / "published.jsonl").read_text().splitlines()]
    assert record[-1]["image_id"] == result.image_id and record[-1]["forced"] is False
    # Glance stored exactly our bytes, in its file store.
    assert (glance.images_dir / result.image_id).read_bytes() == (out / f"{recipe.name}.qcow2").read_bytes()
    conn.close()


def test_an_image_without_cloud_init_from_before_seeded_cells(glance, cloud, make_build: MakeBuild,
                                                              tmp_path: Path) -> None:
    """No cloud-init, and a manifest whose cells record no seed: no admin user, no seeds (an empty
    property, which Glance keeps), the boot matrix as it always read; freeze/thaw still proven."""
    base = recipe_for("t-no-cloud")
    recipe = dataclasses.replace(base, cloud=dataclasses.replace(base.cloud, enabled=False))
    result = publish(recipe, make_build(recipe, seeded=False), to="glance", options=Options(cloud=cloud),
                     reporter=quiet_reporter(tmp_path))
    conn = glance_conn(glance)
    props = conn.image.get(f"/images/{result.image_id}").json()
    conn.close()
    assert "os_admin_user" not in props and props["os_require_quiesce"] == "yes"
    assert props["imagebuild_cloud_seeds"] == ""
    assert props["imagebuild_boot_matrix"] == "bios/pc,bios/q35,uefi/q35,secure-boot/q35"


def test_second_publish_is_a_no_op(glance, cloud, make_build: MakeBuild, tmp_path: Path) -> None:
    recipe = recipe_for("t-twice")
    out = make_build(recipe)
    first = publish(recipe, out, to="glance", options=Options(cloud=cloud),
                     reporter=quiet_reporter(tmp_path))
    second = publish(recipe, out, to="glance", options=Options(cloud=cloud),
                     reporter=quiet_reporter(tmp_path))
    assert first.created and not second.created
    assert second.image_id == first.image_id
    assert [i["id"] for i in images_of(glance, imagebuild_recipe="t-twice")] == [first.image_id]


@pytest.mark.parametrize("method", ["glance-direct", "upload"])
def test_corrupted_upload_is_deleted(glance, cloud, make_build: MakeBuild, tmp_path: Path,
                                     method: str) -> None:
    """The bytes Glance receives differ from the tested ones: Glance's sha512 catches it."""
    recipe = recipe_for(f"t-corrupt-{method}", method=method)
    out = make_build(recipe, data_mib=2)
    artifact = load_published_artifact(out)  # verified against the manifest ...
    qcow2 = artifact.path
    with open(qcow2, "r+b") as f:  # ... then one byte of cluster data rots before the upload
        f.seek(qcow2.stat().st_size - 4096)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    reporter = quiet_reporter(tmp_path)
    with pytest.raises(PublishError, match="does not hold our bytes.*sha512.*has been deleted"):
        publish_to_glance(artifact, recipe.publish.glance, cloud=cloud, reporter=reporter)
    assert images_of(glance, imagebuild_recipe=recipe.name) == []
    deleted = [json.loads(line)["image_id"] for line in (tmp_path / "events.jsonl").read_text().splitlines()
               if '"glance-delete"' in line]
    assert len(deleted) == 1 and not (glance.images_dir / deleted[0]).exists()
    assert not (glance.staging_dir / deleted[0]).exists()


def _spawn(out: Path, recipe, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:  # type: ignore[no-untyped-def]
    recipe_json = tmp_path / f"{recipe.name}.json"
    recipe_json.write_text(recipe.to_json())
    events = tmp_path / f"{recipe.name}-{time.monotonic_ns()}.events"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(out), str(recipe_json), "glance",
                             "--cloud", CLOUD, "--events", str(events), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, events


def _wait_for_upload(events: Path, proc: subprocess.Popen[str], fraction: float) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if events.exists():
            for line in events.read_text().splitlines():
                ev = json.loads(line)
                started = (ev["type"], ev.get("what")) == ("progress", "upload")
                if started and ev["done"] >= fraction * ev["total"]:
                    return
        time.sleep(0.05)
    raise AssertionError("the upload never got going")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_upload_leaves_nothing(glance, cloud, make_build: MakeBuild, tmp_path: Path,
                                           sig: signal.Signals) -> None:
    recipe = recipe_for(f"t-interrupt-{sig.name.lower()}")
    out = make_build(recipe, data_mib=24)
    proc, events = _spawn(out, recipe, tmp_path, "--rate", str(8 * 2**20))  # ~3 s of upload
    _wait_for_upload(events, proc, 0.2)
    assert any(i["status"] in UNFINISHED for i in images_of(glance, imagebuild_recipe=recipe.name))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert "interrupted by " + sig.name in stderr
    left = images_of(glance, imagebuild_recipe=recipe.name)
    if left:
        print(stderr)
    assert left == [], [(i["id"], i["status"], i["updated_at"]) for i in left]


def test_killed_upload_is_cleaned_up_by_the_next_publish(glance, cloud, make_build: MakeBuild,
                                                         tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the next publish of that artifact removes the leftover."""
    recipe = recipe_for("t-killed")
    out = make_build(recipe, data_mib=24)
    proc, events = _spawn(out, recipe, tmp_path, "--rate", str(8 * 2**20))
    _wait_for_upload(events, proc, 0.2)
    proc.kill()
    proc.communicate(timeout=30)
    left = images_of(glance, imagebuild_recipe=recipe.name)
    assert len(left) == 1 and left[0]["status"] != "active"

    result = publish(recipe, out, to="glance", options=Options(cloud=cloud),
                     reporter=quiet_reporter(tmp_path))
    now = images_of(glance, imagebuild_recipe=recipe.name)
    assert [(i["id"], i["status"]) for i in now] == [(result.image_id, "active")]
    assert left[0]["id"] != result.image_id


def test_rotation_keeps_the_newest_n_and_moves_latest(glance, cloud, make_build: MakeBuild,
                                                      tmp_path: Path) -> None:
    recipe = recipe_for("t-rotate", keep=2, latest_tag="t-rotate-latest")
    ids = []
    for day in ("24", "25", "26"):
        out = make_build(recipe, finished=f"2026-11-{day}T07:30:00+00:00")
        ids.append(publish(recipe, out, to="glance", options=Options(cloud=cloud),
                           reporter=quiet_reporter(tmp_path)).image_id)
        if day == "25":
            latest = [i["id"] for i in images_of(glance, tag="t-rotate-latest")]
            assert latest == [ids[1]]
    left = {i["id"]: i for i in images_of(glance, imagebuild_recipe="t-rotate")}
    assert sorted(left) == sorted(ids[1:])
    assert "t-rotate-latest" in left[ids[2]]["tags"] and "t-rotate-latest" not in left[ids[1]]["tags"]


def test_only_boot_tested_images_unless_forced(glance, cloud, make_build: MakeBuild, tmp_path: Path) -> None:
    recipe = recipe_for("t-force")
    out = make_build(recipe, boot_test=False)
    with pytest.raises(PublishError, match="boot test failed"):
        publish(recipe, out, to="glance", options=Options(cloud=cloud),
                     reporter=quiet_reporter(tmp_path))
    assert images_of(glance, imagebuild_recipe="t-force") == []

    result = publish(recipe, out, to="glance", options=Options(cloud=cloud), force=True,
                     reporter=quiet_reporter(tmp_path))
    assert result.forced
    props = glance_conn(glance).image.get(f"/images/{result.image_id}").json()
    assert props["imagebuild_forced"] == "true" and props["imagebuild_boot_test"] == "failed"
    record = json.loads((out / "published.jsonl").read_text().splitlines()[-1])
    assert record["forced"] is True and record["boot_test"] == "failed"


def test_upload_memory_stays_flat(glance, cloud, make_build: MakeBuild, tmp_path: Path) -> None:
    """A 160 MiB image goes through a process whose peak memory stays far below the image size."""
    recipe = recipe_for("t-memory")
    out = make_build(recipe, data_mib=160, virtual_mib=512)
    proc, _ = _spawn(out, recipe, tmp_path)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    result, rss = json.loads(lines[-2]), json.loads(lines[-1])["maxrss_kib"] / 1024
    assert result["created"]
    size_mib = (out / "t-memory.qcow2").stat().st_size / 2**20
    assert size_mib > 150
    assert rss < 100, f"peak RSS {rss:.0f} MiB while publishing {size_mib:.0f} MiB"


def test_invoke_publish_task(glance, cloud, make_build: MakeBuild, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI edge: `invoke publish` prints the result, maps a refused publish to exit code 8."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "t-task.toml").write_text('extends = "debian12"\n'
                                         '[publish.glance]\nlatest_tag = "t-task-latest"\n')
    monkeypatch.setenv("IMAGEBUILD_RECIPE_PATH", str(recipes))
    env = dict(os.environ)
    from imagebuild.recipe import load_recipe

    recipe = load_recipe("t-task")
    ok_out = make_build(recipe)
    invoke = [str(ROOT / ".venv" / "bin" / "invoke"), "-r", str(ROOT), "publish", "t-task"]
    run = subprocess.run([*invoke, "--output", str(ok_out), "--cloud", CLOUD, "--limit-rate", "64M"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["created"] and result["method"] == "glance-direct"
    assert [i["id"] for i in images_of(glance, tag="t-task-latest")] == [result["image_id"]]

    bad_out = make_build(recipe, boot_test=False)
    run = subprocess.run([*invoke, "--output", str(bad_out), "--cloud", CLOUD],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 8, run.stderr
    assert "imagebuild: error:" in run.stderr and "--force" in run.stderr


def _result(proc: subprocess.Popen[str]) -> tuple[dict, str]:  # type: ignore[type-arg]
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    return json.loads(stdout.splitlines()[0]), stderr


def test_simultaneous_publishes_make_one_image(glance, cloud, make_build: MakeBuild, tmp_path: Path) -> None:
    """Two CI runners publish the same artifact at once: neither deletes the other's upload, and
    Glance ends with one image, which both report."""
    recipe = recipe_for("t-race")
    out = make_build(recipe, data_mib=16)
    procs = [_spawn(out, recipe, tmp_path, "--rate", str(8 * 2**20))[0] for _ in range(2)]
    (a, a_err), (b, b_err) = (_result(p) for p in procs)
    assert a["image_id"] == b["image_id"], (a_err, b_err)
    assert sorted([a["created"], b["created"]]) == [False, True]
    waiter_log = b_err if a["created"] else a_err
    assert "waiting for it" in waiter_log or "started first" in waiter_log, waiter_log
    left = images_of(glance, imagebuild_recipe=recipe.name)
    assert [(i["id"], i["status"]) for i in left] == [(a["image_id"], "active")]


def _forge_unfinished(glance, sha256: str, uploader: str) -> str:  # type: ignore[no-untyped-def]
    """An image record as another host's publish leaves it while uploading (queued, no bytes yet)."""
    from openstack.image.v2.image import Image

    conn = glance_conn(glance)
    try:
        return str(Image.new(name="t-foreign", disk_format="qcow2", container_format="bare",
                             imagebuild_recipe="t-foreign", imagebuild_sha256=sha256,
                             imagebuild_uploader=uploader).create(conn.image).id)
    finally:
        conn.close()


def test_another_hosts_upload_is_waited_for_then_its_copy_used(glance, cloud, make_build: MakeBuild,
                                                              tmp_path: Path) -> None:
    """Another host's unfinished upload of the same artifact may be alive: wait, never delete it."""
    recipe = recipe_for("t-foreign")
    out = make_build(recipe)
    foreign = _forge_unfinished(glance, load_published_artifact(out).sha256, "ci-runner-7/b00t/4242/99")
    proc, events = _spawn(out, recipe, tmp_path)
    log = events.with_suffix(".log")
    deadline = time.monotonic() + 60
    while not (log.exists() and "waiting for it" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(4)  # more than one poll: it keeps waiting, the foreign image stays
    assert proc.poll() is None
    assert [i["id"] for i in images_of(glance, imagebuild_recipe="t-foreign")] == [foreign]
    conn = glance_conn(glance)  # the other host gives up on its upload
    try:
        conn.image.delete_image(foreign)
    finally:
        conn.close()
    result, _ = _result(proc)
    assert result["created"] and result["image_id"] != foreign
    assert [i["status"] for i in images_of(glance, imagebuild_recipe="t-foreign")] == ["active"]


def test_another_hosts_stale_upload_is_a_leftover(glance, cloud, make_build: MakeBuild, tmp_path: Path) -> None:
    recipe = recipe_for("t-stale", stale_upload_minutes=0)
    out = make_build(recipe)
    foreign = _forge_unfinished(glance, load_published_artifact(out).sha256, "ci-runner-9/b00t/4242/99")
    reporter = quiet_reporter(tmp_path)
    result = publish(recipe, out, to="glance", options=Options(cloud=cloud), reporter=reporter)
    assert result.created
    assert "past stale_upload_minutes = 0" in (tmp_path / "publish.log").read_text()
    sha256 = load_published_artifact(out).sha256
    assert [i["id"] for i in images_of(glance, imagebuild_sha256=sha256)] == [result.image_id]
    assert foreign != result.image_id

"""Fast checks of the publish gate, the registry and the stream (no server; qemu-img makes the files)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from conftest import MakeBuild, recipe_for

from imagebuild.errors import PublishError, RecipeError
from imagebuild.events import Reporter
from imagebuild.publish import TARGETS, Options, publish
from imagebuild.publish.gate import load_published_artifact
from imagebuild.publish.glance import _choose_method, glance_properties
from imagebuild.publish.stream import UploadStream
from imagebuild.recipe import Glance, SeedKind, from_data, validate

pytestmark = pytest.mark.unit


def test_a_verified_artifact_describes_itself(make_build: MakeBuild) -> None:
    recipe = recipe_for("u-ok")
    out = make_build(recipe, virtual_mib=2100)
    manifest = json.loads((out / "manifest.json").read_text())
    a = load_published_artifact(out)
    assert (a.sha256, a.sha512) == (manifest["artifact"]["sha256"], manifest["artifact"]["sha512"])
    assert a.versioned_name == "u-ok-v12-20261127T073000-ab12cd"
    assert a.min_disk_gib == 3 and a.image.min_ram_mib == 512 and a.image.guest_agent
    assert a.boot_test == "passed" and not a.forced


@pytest.mark.parametrize("boot_test, word", [(False, "failed"), (None, "was not run")])
def test_untested_images_need_force_and_say_so(make_build: MakeBuild, boot_test: bool | None,
                                               word: str) -> None:
    out = make_build(recipe_for("u-untested"), boot_test=boot_test)
    with pytest.raises(PublishError, match=f"boot test {word}.*--force"):
        load_published_artifact(out)
    a = load_published_artifact(out, force=True)
    assert a.forced and a.provenance()["imagebuild_forced"] == "true"
    assert a.provenance()["imagebuild_boot_test"] == ("failed" if boot_test is False else "not-run")


def test_a_file_that_changed_after_the_build_is_refused_even_with_force(make_build: MakeBuild) -> None:
    out = make_build(recipe_for("u-changed"))
    qcow2 = out / "u-changed.qcow2"
    with open(qcow2, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(PublishError, match="sha256 is .* but the manifest says"):
        load_published_artifact(out, force=True)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["artifact"].update(file="../../etc/passwd"), "must be a file name"),
    (lambda m: m["artifact"].update(format="raw"), "only qcow2"),
    (lambda m: m["artifact"].update(sha256="nothex"), "not a sha256"),
    (lambda m: m.update(schema=2), "unknown manifest schema"),
    (lambda m: m["artifact"].pop("virtual_size"), "virtual_size' is missing"),
    (lambda m: m["artifact"].update(virtual_size=1), "virtual size .* differs"),
    (lambda m: m.update(boot_test={"passed": "yes"}), "boolean 'passed'"),
])
def test_bad_manifests_are_refused_with_a_reason(make_build: MakeBuild, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    out = make_build(recipe_for("u-bad"))
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match=message):
        load_published_artifact(out, force=True)


def test_no_build_means_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="no manifest.json .* build the recipe first"):
        load_published_artifact(tmp_path)


def test_a_qcow2_with_a_backing_file_is_refused(make_build: MakeBuild) -> None:
    out = make_build(recipe_for("u-backing"))
    qcow2 = out / "u-backing.qcow2"
    base = out / "base.qcow2"
    qcow2.rename(base)
    os.system(f"qemu-img create -q -f qcow2 -F qcow2 -b {base} {qcow2} 1536M")
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib
    data = qcow2.read_bytes()
    manifest["artifact"].update(file_size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                sha512=hashlib.sha512(data).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="backing file"):
        load_published_artifact(out)


def test_publish_checks_the_build_belongs_to_the_recipe(make_build: MakeBuild) -> None:
    out = make_build(recipe_for("u-one"))
    with pytest.raises(PublishError, match="holds a build of 'u-one', not 'u-two'"):
        publish(recipe_for("u-two"), out, to="glance")
    with pytest.raises(PublishError, match="unknown publish target 'swift'.*glance, ovirt"):
        publish(recipe_for("u-one"), out, to="swift")


def test_targets_are_registered_once_with_kebab_names() -> None:
    assert set(TARGETS) == {"glance", "ovirt"}
    for name, target in TARGETS.items():
        assert target.name == name and target.summary and callable(target.send)


def test_import_is_used_where_offered_and_upload_otherwise() -> None:
    offered = ["glance-direct", "web-download"]
    assert _choose_method(Glance(), offered) == "glance-direct"
    assert _choose_method(Glance(), ["web-download"]) == "upload"
    assert _choose_method(Glance(), []) == "upload"
    assert _choose_method(Glance(method="upload"), offered) == "upload"
    with pytest.raises(PublishError, match="offers only: web-download"):
        _choose_method(Glance(method="glance-direct"), ["web-download"])


def test_recipe_properties_cannot_fake_provenance(make_build: MakeBuild) -> None:
    a = load_published_artifact(make_build(recipe_for("u-props")))
    props = glance_properties(a, Glance(properties={"hw_disk_bus": "scsi", "os_type": "linux"}))
    assert props["hw_disk_bus"] == "scsi" and props["imagebuild_sha256"] == a.sha256
    recipe = recipe_for("u-props")
    data = json.loads(recipe.to_json())
    for bad, message in [({"properties": {"imagebuild_sha256": "x"}}, "cannot be overridden"),
                         ({"properties": {"min_disk": "1"}}, "cannot be overridden"),
                         ({"visibility": "everyone"}, "must be one of"),
                         ({"keep": -1}, "keep"), ({"method": "ftp"}, "method"),
                         ({"tags": [" spaced "]}, "not a usable Glance tag")]:
        data["publish"]["glance"] = {**json.loads(recipe.to_json())["publish"]["glance"], **bad}
        r = from_data(type(recipe), data, origins={}, default_file="<test>")
        with pytest.raises(RecipeError, match=message):
            validate(r, {}, "<test>")


def test_upload_stream_hands_out_chunks_and_hashes_them(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * 2**20 + 5))
    s = UploadStream(path, chunk_size=2**20)
    assert len(s) == 3 * 2**20 + 5
    chunks = list(s)
    assert [len(c) for c in chunks] == [2**20] * 3 + [5]
    import hashlib
    assert s.sha512 == hashlib.sha512(path.read_bytes()).hexdigest()
    s.close()
    limited = UploadStream(path, rate_limit=6 * 2**20, chunk_size=2**20)
    start = time.monotonic()
    while limited.read(2**20):
        pass
    limited.close()
    assert time.monotonic() - start >= 0.4  # 3 MiB at 6 MiB/s


def test_no_credential_reaches_errors_logs_or_events(make_build: MakeBuild, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "Canary-Pa55word-7f3a"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(f"clouds:\n  secret-cloud:\n    auth:\n      auth_url: http://127.0.0.1:{port}/v3\n"
                      f"      username: ci\n      password: {canary}\n      project_name: images\n"
                      "      user_domain_name: Default\n      project_domain_name: Default\n"
                      "    region_name: RegionOne\n    api_timeout: 5\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    recipe = dataclasses.replace(recipe_for("u-secret"))
    out = make_build(recipe)
    log, events = tmp_path / "publish.log", tmp_path / "events.jsonl"
    stream = tmp_path / "terminal.txt"
    with open(stream, "w") as terminal:
        reporter = Reporter(stream=terminal, verbose=True)
        reporter.attach(log, events)
        with pytest.raises(PublishError) as err:
            publish(recipe, out, to="glance", options=Options(cloud="secret-cloud"), reporter=reporter)
        reporter.close()
    assert "Glance" in str(err.value) and canary not in str(err.value)
    for f in (log, events, stream, out / "published.jsonl"):
        assert not f.exists() or canary not in f.read_text()


def _with(recipe, *, firmware: str = "auto", machine: str | None = None, image_firmware: str | None = None):
    from imagebuild.recipe import Firmware, Machine
    image = recipe.image
    if image_firmware:
        image = dataclasses.replace(image, firmware=Firmware(image_firmware))
    if machine:
        image = dataclasses.replace(image, machine_type=Machine(machine))
    return dataclasses.replace(recipe, image=image, publish=dataclasses.replace(recipe.publish, firmware=firmware))


@pytest.mark.parametrize("firmware, machine, cells, want", [
    # (publish.firmware, image.machine_type, cells that passed) → (hw_firmware_type, hw_machine_type,
    #  os_secure_boot, oVirt bios_type)
    ("auto", None, {"bios/pc": True, "bios/q35": True, "uefi/q35": True, "secure-boot/q35": True},
     ("bios", "pc", None, "i440fx_sea_bios")),
    ("uefi", "q35", {"bios/pc": True, "uefi/q35": True, "secure-boot/q35": False},
     ("uefi", "q35", None, "q35_ovmf")),
    ("secure-boot", "q35", {"uefi/q35": True, "secure-boot/q35": True},
     ("uefi", "q35", "required", "q35_secure_boot")),
    ("bios", "q35", {"bios/q35": True}, ("bios", "q35", None, "q35_sea_bios")),
])
def test_firmware_facts_come_from_the_passed_cells(make_build: MakeBuild, firmware, machine, cells, want) -> None:
    recipe = _with(recipe_for(f"u-fw-{firmware}"), firmware=firmware, machine=machine)
    out = make_build(recipe, cells=cells, boot_test=all(cells.values()))
    # a failed secure-boot cell fails the whole boot test: publishing UEFI then needs --force...
    art = load_published_artifact(out, force=not all(cells.values()))
    props = glance_properties(art, Glance())
    assert (props["hw_firmware_type"], props["hw_machine_type"], props.get("os_secure_boot"),
            art.image.ovirt_bios_type) == want
    assert props["imagebuild_boot_matrix"] == ",".join(c for c, ok in cells.items() if ok)


def test_publishing_refuses_firmware_no_cell_proved(make_build: MakeBuild) -> None:
    # the recipe asks for UEFI on q35, but only the BIOS cells ran (a narrowed matrix)
    recipe = _with(recipe_for("u-fw-unproven"), firmware="uefi", machine="q35")
    out = make_build(recipe, cells={"bios/pc": True, "bios/q35": True})
    with pytest.raises(PublishError, match=r"would advertise uefi firmware on q35, but no boot-test cell "
                                           r"uefi/q35 passed \(passed: bios/pc, bios/q35\)"):
        load_published_artifact(out)
    # and a manifest from before the boot matrix (no cells) is refused with the reason
    m = json.loads((out / "manifest.json").read_text())
    m["boot_test"].pop("cells")
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PublishError, match="records no cells"):
        load_published_artifact(out)


def test_disk_bus_and_live_operations_come_from_the_passed_cells(make_build: MakeBuild) -> None:
    scsi = recipe_for("u-scsi", properties={"hw_disk_bus": "scsi"})
    art = load_published_artifact(make_build(scsi))  # cells alternate virtio, scsi: both proven
    props = glance_properties(art, scsi.publish.glance)
    assert (props["hw_disk_bus"], props["hw_scsi_model"]) == ("scsi", "virtio-scsi")
    assert props["imagebuild_live_checks"] == "vcpu-hotplug,memory-hotplug,balloon,fsfreeze"
    assert art.image.live_checks == ("vcpu-hotplug", "memory-hotplug", "balloon", "fsfreeze")
    # only the first cell ran (on virtio-blk): scsi was never proven, so it is not advertised
    only_virtio = load_published_artifact(make_build(scsi, cells={"bios/pc": True}))
    with pytest.raises(PublishError, match="no passed boot-test cell booted from virtio-scsi"):
        glance_properties(only_virtio, scsi.publish.glance)


class _AlreadyDeleted:
    """A stand-in for the SDK's image proxy (named as such: the race that makes Glance answer a delete
    with 400 "deleted to deleted" cannot be made to happen on demand with the real Glance): the image
    was deleted a moment ago and still reads as status deleted."""

    def __init__(self, status: str) -> None:
        self.status, self.deletes = status, 0

    def delete_image(self, image_id: str, ignore_missing: bool = True) -> None:
        from openstack import exceptions as os_exc
        self.deletes += 1
        raise os_exc.HttpException(message="Image status transition from deleted to deleted is not allowed",
                                   http_status=400)

    def get_image(self, image_id: str):  # type: ignore[no-untyped-def]
        return type("Img", (), {"status": self.status})()


def test_a_delete_that_already_went_through_counts_as_gone() -> None:
    from openstack import exceptions as os_exc

    from imagebuild.publish.glance import _delete
    images = _AlreadyDeleted("deleted")
    _delete(images, "157bd538", Reporter(), "another publish of this artifact started first")  # type: ignore[arg-type]
    assert images.deletes == 1
    with pytest.raises(os_exc.HttpException):  # a 400 for an image that is not deleted stays an error
        _delete(_AlreadyDeleted("active"), "157bd538", Reporter(), "test")  # type: ignore[arg-type]


# -- what the seeded cells proved, and the stores that need them ----------------------------------------

def _edit_manifest(out: Path, edit) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def _no_cloud(recipe):  # type: ignore[no-untyped-def]
    return dataclasses.replace(recipe, cloud=dataclasses.replace(recipe.cloud, enabled=False))


def test_a_cloud_image_tells_glance_its_user_seeds_and_quiesce(make_build: MakeBuild) -> None:
    recipe = recipe_for("u-cloud")  # debian12: cloud-init, default user debian, four cells for four seeds
    art = load_published_artifact(make_build(recipe), seed=SeedKind.NOVA, store="glance")
    props = glance_properties(art, recipe.publish.glance)
    assert props["os_admin_user"] == "debian"
    assert props["hw_qemu_guest_agent"] == "yes" and props["os_require_quiesce"] == "yes"
    assert props["imagebuild_cloud_seeds"] == "nocloud,nova,ovirt"  # sorted; the unseeded cell is no seed
    assert props["imagebuild_boot_matrix"] == "bios/pc+nova,bios/q35+ovirt,uefi/q35+nocloud,secure-boot/q35"
    assert art.image.cloud_seeds == ("nocloud", "nova", "ovirt") and art.image.quiesce


def test_only_passed_cells_prove_seeds(make_build: MakeBuild) -> None:
    # a forced publish of a build whose nocloud cell failed: nocloud is not advertised
    cells = {"bios/pc+nova": True, "bios/q35+ovirt": True, "uefi/q35+nocloud": False, "secure-boot/q35": True}
    recipe = recipe_for("u-seeds-failed")
    art = load_published_artifact(make_build(recipe, cells=cells, boot_test=False), force=True,
                                  seed=SeedKind.NOVA, store="glance")
    props = glance_properties(art, recipe.publish.glance)
    assert props["imagebuild_cloud_seeds"] == "nova,ovirt"
    assert props["imagebuild_boot_matrix"] == "bios/pc+nova,bios/q35+ovirt,secure-boot/q35"


def test_quiesce_is_required_only_where_freeze_and_thaw_ran_and_passed(make_build: MakeBuild) -> None:
    recipe = recipe_for("u-quiesce")
    out = make_build(recipe)

    def skip_fsfreeze(m: dict) -> None:  # every cell skipped it (e.g. boot_test.skip_checks)
        for cell in m["boot_test"]["cells"]:
            for check in cell["checks"]:
                if check["name"] == "fsfreeze":
                    check.update(skipped=True, detail="skipped: boot_test.skip_checks")
    _edit_manifest(out, skip_fsfreeze)
    art = load_published_artifact(out)
    props = glance_properties(art, Glance())
    assert "os_require_quiesce" not in props and props["hw_qemu_guest_agent"] == "yes"
    assert "fsfreeze" not in props["imagebuild_live_checks"] and not art.image.quiesce
    # a recipe cannot ask for it unproven; it may say no where it was proven
    with pytest.raises(PublishError, match="os_require_quiesce, but no passed boot-test cell froze"):
        glance_properties(art, Glance(properties={"os_require_quiesce": "yes"}))
    proven = load_published_artifact(make_build(recipe))
    assert glance_properties(proven, Glance(properties={"os_require_quiesce": "no"}))["os_require_quiesce"] == "no"
    # no agent advertised (the recipe says so): no quiesce either, whatever the cells proved
    assert "os_require_quiesce" not in glance_properties(proven, Glance(properties={"hw_qemu_guest_agent": "no"}))

    def drop_fsfreeze(m: dict) -> None:  # a build from before the fsfreeze check
        for cell in m["boot_test"]["cells"]:
            cell["checks"] = [c for c in cell["checks"] if c["name"] != "fsfreeze"]
    _edit_manifest(out, drop_fsfreeze)
    assert "os_require_quiesce" not in glance_properties(load_published_artifact(out), Glance())


def test_an_image_without_cloud_init_names_no_user_and_no_seeds(make_build: MakeBuild) -> None:
    recipe = _no_cloud(recipe_for("u-no-cloud"))
    out = make_build(recipe)  # its cells carry no seed ("seed": "none")
    art = load_published_artifact(out, seed=SeedKind.NOVA, store="glance")  # no nova cell needed
    props = glance_properties(art, Glance())
    assert "os_admin_user" not in props and props["imagebuild_cloud_seeds"] == ""
    assert props["imagebuild_boot_matrix"] == "bios/pc,bios/q35,uefi/q35,secure-boot/q35"
    assert props["os_require_quiesce"] == "yes"  # freeze/thaw is the agent's, cloud-init or not
    # a manifest from before seeded cells reads the same
    old = load_published_artifact(make_build(recipe, seeded=False), seed=SeedKind.OVIRT, store="ovirt")
    assert glance_properties(old, Glance())["imagebuild_boot_matrix"] == props["imagebuild_boot_matrix"]


@pytest.mark.parametrize("seed, store", [(SeedKind.NOVA, "glance"), (SeedKind.OVIRT, "ovirt")])
def test_a_cloud_image_needs_a_passed_cell_with_the_stores_seed(make_build: MakeBuild, seed: SeedKind,
                                                              store: str) -> None:
    recipe = recipe_for(f"u-refuse-{store}")
    # a build from before seeded cells (no "seed" in its cells)
    old = make_build(recipe, seeded=False)
    with pytest.raises(PublishError, match=rf"refusing to publish a cloud image to {store}: build \S+ has no "
                                           rf"boot-test cell with the {seed} seed \(it records no seeds.*rebuild it"):
        load_published_artifact(old, seed=seed, store=store)
    # the store's cell failed (a manifest that still says passed: the refusal does not trust the summary)
    cells = dict.fromkeys(["bios/pc+nova", "bios/q35+ovirt", "bios/pc+nocloud", "bios/q35"], True)  # a bios matrix
    label = next(c for c in cells if c.endswith(f"+{seed}"))
    failed = make_build(recipe, cells={**cells, label: False})
    with pytest.raises(PublishError, match=rf"to {store}: its boot-test cell {re.escape(label)} did not pass"):
        load_published_artifact(failed, seed=seed, store=store)
    # the recipe's boot_test.seeds left the store's seed out
    without = make_build(recipe, cells={c: ok for c, ok in cells.items() if c != label})
    with pytest.raises(PublishError, match=rf"no boot-test cell with the {seed} seed \(cells: .*\); "
                                           rf"add \"{seed}\" to boot_test.seeds"):
        load_published_artifact(without, seed=seed, store=store)
    # the other store's seed is not needed; nor is any seed without the store asking
    other = SeedKind.OVIRT if seed is SeedKind.NOVA else SeedKind.NOVA
    assert load_published_artifact(without, seed=other, store="elsewhere").image.cloud
    assert load_published_artifact(old).image.cloud_seeds == ()
    # --force (a failed boot test) lets it through, as it does unproven firmware, and says so
    forced = make_build(recipe, cells={**cells, label: False}, boot_test=False)
    assert load_published_artifact(forced, force=True, seed=seed, store=store).forced


@pytest.mark.parametrize("to", ["glance", "ovirt"])
def test_publish_refuses_before_it_connects(make_build: MakeBuild, to: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal comes from the gate: no store is configured here, and the error is the refusal."""
    for var in [v for v in os.environ if v.startswith(("OS_", "OVIRT_"))]:
        monkeypatch.delenv(var)
    recipe = recipe_for(f"u-gate-{to}")
    out = make_build(recipe, seeded=False)
    with pytest.raises(PublishError, match=f"refusing to publish a cloud image to {to}: .*"
                                           f"{'nova' if to == 'glance' else 'ovirt'} seed"):
        publish(recipe, out, to=to)
    assert not (out / "published.jsonl").exists()


def test_targets_name_the_seed_their_guests_get() -> None:
    assert {name: t.seed for name, t in TARGETS.items()} == {"glance": SeedKind.NOVA, "ovirt": SeedKind.OVIRT}

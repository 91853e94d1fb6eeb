"""Firmware, disk layouts and the boot-test matrix: recipe keys, layouts written by the real sfdisk and
mkfs.fat, domain XML for every cell (golden files), and the CLI's bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imagebuild.accel import Accel
from imagebuild.boottest import cell_spec
from imagebuild.disklayout import GPT_TYPE, Role, layout_for
from imagebuild.domain import domain_xml, firmware_files
from imagebuild.errors import RecipeError
from imagebuild.recipe import BootFirmware, Cell, Firmware, Machine, load_recipe, publish_firmware

from ..conftest import run_invoke
from .test_domain_xml import check_golden

pytestmark = pytest.mark.unit


def recipe_file(d: Path, body: str, name: str = "fw") -> Path:
    p = d / f"{name}.toml"
    p.write_text('extends = "debian12"\n' + body)
    return p


# -- recipes -------------------------------------------------------------------------------------

def test_shipped_recipes_reach_every_firmware_and_debian13_is_hybrid():
    kinds = {load_recipe(n).image.firmware for n in ("debian12", "debian12-bios", "debian13", "debian13-uefi")}
    assert kinds == set(Firmware)
    d13 = load_recipe("debian13")
    assert (d13.install.bootstrap.suite, d13.image.firmware) == ("trixie", Firmware.HYBRID)
    assert [str(c) for c in d13.boot_test.cells(d13.image.firmware)] == [
        "bios/pc", "bios/q35", "uefi/q35", "secure-boot/q35"]
    uefi = load_recipe("debian13-uefi")
    assert [str(c) for c in uefi.boot_test.cells(uefi.image.firmware)] == ["uefi/q35", "secure-boot/q35"]
    assert publish_firmware(uefi) is BootFirmware.UEFI and uefi.image.machine_type is Machine.Q35
    assert publish_firmware(d13) is BootFirmware.BIOS  # hybrid advertises what every cloud boots untold


@pytest.mark.parametrize("body, key, message", [
    ('[image]\nfirmware = "efi"\n', "image.firmware", "one of 'bios', 'uefi', 'hybrid'"),
    ('[image]\nmachine_type = "isapc"\n', "image.machine_type", "one of 'pc', 'q35'"),
    ('[boot_test]\nmatrix = ["uefi/pc"]\n', "boot_test.matrix[0]", "uefi firmware is tested on q35 only"),
    ('[boot_test]\nmatrix = ["bios"]\n', "boot_test.matrix[0]", "is not firmware/machine"),
    ('[boot_test]\nmatrix = ["coreboot/q35"]\n', "boot_test.matrix[0]", "unknown firmware 'coreboot'"),
    ('[image]\nfirmware = "bios"\n[boot_test]\nmatrix = ["bios/pc", "uefi/q35"]\n', "boot_test.matrix[1]",
     "'uefi/q35' cannot boot a bios image"),
    ('[image]\ndisk_gib = 1\n', "image.disk_gib", "leaves 895 MiB for / beside the hybrid boot partitions"),
    ('[publish]\nfirmware = "uefi"\n[image]\nfirmware = "bios"\n', "publish.firmware", "that a bios image can boot"),
    ('[publish]\nfirmware = "uefi"\n', "publish.firmware", "uefi is booted on q35 only"),
    ('[publish]\nfirmware = "secure-boot"\n[image]\nmachine_type = "q35"\n[boot_test]\nmatrix = ["uefi/q35"]\n',
     "boot_test.matrix", "has no secure-boot cell"),
    ('[publish.glance.properties]\nhw_firmware_type = "uefi"\n', "publish.glance.properties.hw_firmware_type",
     "set from the boot-test cells that passed"),
])
def test_firmware_keys_are_validated_naming_file_and_key(tmp_path, body, key, message):
    path = recipe_file(tmp_path, body)
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    assert e.value.key == key and message in str(e.value), str(e.value)
    assert e.value.file == str(path)


def test_vm_installs_are_bios_only_for_now(tmp_path):
    path = tmp_path / "ks.toml"
    path.write_text('extends = "centos7"\n[image]\nfirmware = "hybrid"\n')
    with pytest.raises(RecipeError, match="VM install .* makes BIOS"):
        load_recipe(str(path))


def test_matrix_narrows_in_order_without_duplicates(tmp_path):
    r = load_recipe(str(recipe_file(tmp_path, '[boot_test]\nmatrix = ["uefi/q35", "bios/pc", "uefi/q35"]\n')))
    assert r.boot_test.cells(r.image.firmware) == (Cell(BootFirmware.UEFI, Machine.Q35),
                                                  Cell(BootFirmware.BIOS, Machine.PC))


# -- layouts, written by the real tools ----------------------------------------------------------

@pytest.mark.parametrize("firmware, want", [
    (Firmware.BIOS, {1: (2048, None)}),
    (Firmware.UEFI, {15: (2048, 127 * 2048), 1: (128 * 2048, None)}),
    (Firmware.HYBRID, {14: (2048, 3 * 2048), 15: (4 * 2048, 124 * 2048), 1: (128 * 2048, None)}),
])
def test_layouts_written_by_sfdisk(tmp_path, firmware, want):
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"")
    with open(disk, "wb") as f:
        f.truncate(3 * 1024**3)
    layout = layout_for(firmware)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], check=True, text=True,
                   input=layout.sfdisk_script(str(disk)))
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]
    assert table["label"] == layout.label
    got = {int(p["node"][len(str(disk)):]): p for p in table["partitions"]}
    assert set(got) == set(want)
    for number, (start, size) in want.items():
        assert got[number]["start"] == start
        if size is not None:
            assert got[number]["size"] == size
    root = got[1]
    assert (root["start"] + root["size"]) * 512 <= 3 * 1024**3 - (1024**2 if layout.label == "gpt" else 0)
    if layout.label == "gpt":
        roles = {p.number: p.role for p in layout.partitions}
        assert {n: p["type"] for n, p in got.items()} == {n: GPT_TYPE[roles[n]] for n in got}
        assert layout.root.number == 1 and layout.part(Role.ESP) is not None


# -- domain XML for every cell --------------------------------------------------------------------

@pytest.mark.parametrize("cell, bus", [("bios/pc", "virtio"), ("bios/q35", "scsi"), ("uefi/q35", "virtio"),
                                       ("secure-boot/q35", "scsi")])
def test_cell_domain_xml_golden(cell, bus):
    """Each cell's domain as the boot test defines it: firmware (loader, NVRAM copy, SMM), chipset, the
    root disk's bus, and the hotplug-ready shape (vCPUs below a maximum, maxMemory + NUMA, balloon)."""
    c = Cell.parse(cell)
    spec = cell_spec(load_recipe("debian12"), c, name=f"imagebuild-debian12-x-boot-{c.slug}", accel=Accel.TCG,
                     overlay=Path("/w/overlay.qcow2"), nvram=Path(f"/w/{c.slug}-VARS.fd"),
                     console_log=Path(f"/o/boot-console-{c.slug}.log"), mac="52:54:00:12:34:56", disk_bus=bus)
    check_golden(f"boottest-domain-{c.slug}.xml", domain_xml(spec))


def test_ovmf_files_exist_and_secure_boot_uses_the_ms_pair():
    code, vars_ = firmware_files(BootFirmware.SECURE_BOOT)
    assert code.name == "OVMF_CODE_4M.ms.fd" and vars_.name == "OVMF_VARS_4M.ms.fd" and code.is_file()
    assert firmware_files(BootFirmware.UEFI)[0].name == "OVMF_CODE_4M.fd"


# -- the CLI ---------------------------------------------------------------------------------------

def test_list_json_gives_each_buildable_recipe_with_its_matrix(invoke_env):
    res = run_invoke(["list", "--json"], invoke_env)
    assert res.returncode == 0, res.stderr
    rows = {r["recipe"]: r for r in json.loads(res.stdout)}
    assert "debian-base" not in rows  # abstract
    assert rows["debian13"]["firmware"] == "hybrid" and len(rows["debian13"]["matrix"]) == 4
    assert rows["debian13-uefi"]["matrix"] == ["uefi/q35", "secure-boot/q35"]
    assert rows["debian12-bios"]["publish_firmware"] == "bios"


def test_boot_test_cell_that_cannot_boot_the_image_is_refused_before_any_vm(invoke_env, tmp_path):
    image = tmp_path / "x.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    res = run_invoke(["boot-test", str(image), "--recipe", "debian12-bios", "--firmware", "uefi"], invoke_env)
    assert res.returncode == 2 and "uefi/q35 cannot boot debian12-bios, a bios image" in res.stderr
    res = run_invoke(["boot-test", str(image), "--recipe", "debian12", "--firmware", "uefi", "--machine", "pc"],
                     invoke_env)
    assert res.returncode == 2 and "uefi firmware is tested on q35 only" in res.stderr


def test_example_ci_fans_out_one_job_per_recipe(invoke_env):
    """The example pipelines build each recipe as its own matrix job from `invoke list --json`."""
    import yaml
    examples = Path(__file__).resolve().parents[2] / "examples" / "ci"
    bootstrap = sorted(r["recipe"] for r in json.loads(run_invoke(["list", "--json"], invoke_env).stdout)
                       if r["backend"] == "bootstrap")
    gitlab = yaml.safe_load((examples / "gitlab-ci.yml").read_text())
    assert sorted(gitlab["build"]["parallel"]["matrix"][0]["RECIPE"]) == bootstrap
    assert all(gitlab[j]["parallel"] == gitlab["build"]["parallel"] for j in ("publish-glance", "publish-ovirt"))
    gh = yaml.safe_load((examples / "github-actions.yml").read_text())
    assert "invoke list --json" in json.dumps(gh) or "./inv list --json" in json.dumps(gh)
    assert gh["jobs"]["build"]["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.recipes.outputs.matrix) }}"


def test_missing_ovmf_is_named_before_anything_starts(monkeypatch, tmp_path):
    from imagebuild import domain
    from imagebuild.errors import ToolMissing
    from imagebuild.pipeline import validate
    monkeypatch.setattr(domain, "OVMF_DIR", tmp_path)  # a host without the ovmf package
    with pytest.raises(ToolMissing, match=r"OVMF_CODE_4M.fd.* the uefi boot-test cells need OVMF "
                                          r"\(install the Debian package ovmf"):
        validate(load_recipe("debian12"))
    validate(load_recipe("debian12-bios"))  # BIOS cells need no OVMF

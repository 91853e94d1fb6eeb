"""Full builds of the other firmware layouts, each boot-tested in every cell it claims: debian13
(Debian 13, hybrid) in the default suite; debian12-bios (MBR) and debian13-uefi (GPT + ESP only) in the
`matrix` tier (`./inv test --tier matrix`), which a developer runs on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebuild.appliance import open_guest
from imagebuild.disklayout import layout_for
from imagebuild.recipe import Firmware

from ..conftest import run_invoke

CASES = [
    pytest.param("debian13", Firmware.HYBRID, ["bios/pc", "bios/q35", "uefi/q35", "secure-boot/q35"],
                 marks=pytest.mark.build),
    pytest.param("debian12-bios", Firmware.BIOS, ["bios/pc", "bios/q35"], marks=pytest.mark.matrix),
    pytest.param("debian13-uefi", Firmware.UEFI, ["uefi/q35", "secure-boot/q35"], marks=pytest.mark.matrix),
]


@pytest.mark.parametrize("recipe, firmware, cells", CASES)
def test_build_boots_in_every_claimed_cell(recipe, firmware, cells, invoke_env, accel):
    res = run_invoke(["build", recipe], invoke_env, timeout=3600)
    assert res.returncode == 0, res.stderr[-8000:]
    out = Path(invoke_env["IMAGEBUILD_OUTPUT"]) / recipe
    m = json.loads((out / "manifest.json").read_text())
    assert m["boot_test"]["passed"] and [c["cell"] for c in m["boot_test"]["cells"]] == cells
    for cell in m["boot_test"]["cells"]:
        assert cell["passed"] and all(c["ok"] for c in cell["checks"]), cell
        assert "login:" in (out / cell["console_log"]).read_text(errors="replace"), cell["cell"]
    assert m["inputs"]["suite"] == ("trixie" if recipe.startswith("debian13") else "bookworm")
    layout = layout_for(firmware)
    assert m["inputs"]["disk_layout"] == layout.describe()
    # the finished image, read on its own: the layout its firmware needs and nothing else
    with open_guest(out / f"{recipe}.qcow2", "qcow2", accel=accel.accel, readonly=True, firmware=firmware) as g:
        assert g.g.part_get_parttype("/dev/sda") == ("msdos" if firmware is Firmware.BIOS else "gpt")
        assert sorted(g.g.list_partitions()) == sorted(f"/dev/sda{p.number}" for p in layout.partitions)
        if layout.esp is not None:
            assert g.esp_device == "/dev/sda15" and g.g.is_file("/boot/efi/EFI/BOOT/BOOTX64.EFI")
        else:
            assert not g.g.exists("/boot/efi/EFI")
        os_release = g.read("/etc/os-release")
        assert ('VERSION_ID="13"' if recipe.startswith("debian13") else 'VERSION_ID="12"') in os_release

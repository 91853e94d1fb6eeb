"""The stage cache with real builds: the session's debian12 build again reuses every stage; a
customize-only change reuses the install, the boot loader's output and the unchanged compressed
clusters, says why the rest was rebuilt, and the image it makes boots through BIOS and UEFI; a change
grub reads has grub run again, in the appliance (the cached install is a qcow2 overlay, which no loop
device takes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import run_invoke

pytestmark = pytest.mark.build


def test_nothing_changed_reuses_every_stage(built_debian12, invoke_env):
    first = json.loads((built_debian12 / "manifest.json").read_text())
    res = run_invoke(["build", "debian12"], invoke_env, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    for stage in ("install", "customize", "sparsify", "boot-test"):
        assert f"{stage}: reused (key " in res.stderr, (stage, res.stderr[-3000:])
    m = json.loads((built_debian12 / "manifest.json").read_text())
    assert m["build_id"] != first["build_id"]
    assert m["artifact"]["sha256"] == first["artifact"]["sha256"]  # the same image, not rebuilt
    assert all(m["cache"][s]["reused"] and m["cache"][s]["from_build"] == first["build_id"]
               for s in ("install", "customize", "sparsify")), m["cache"]
    assert m["boot_test"] == first["boot_test"] and m["cache"]["boot-test"]["from_build"] == first["build_id"]
    assert (built_debian12 / "boot-console-uefi-q35.log").read_text(errors="replace").count("login:") >= 1
    listing = run_invoke(["cache", "--json"], invoke_env)
    stages = {(e["recipe"], e["stage"]) for e in json.loads(listing.stdout)}
    assert {("debian12", "install"), ("debian12", "artifact")} <= stages


def test_a_customize_change_reuses_the_install_and_names_the_change(built_debian12, invoke_env, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "debian12-noseed.toml").write_text('extends = "debian12"\n[customize]\ndisable = ["random-seed"]\n')
    env = {**invoke_env, "IMAGEBUILD_RECIPE_PATH": str(recipes)}
    res = run_invoke(["build", "debian12-noseed", "--no-boot-test"], env, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    first = json.loads((built_debian12 / "manifest.json").read_text())
    assert "install: reused (key " in res.stderr
    assert "customize: built (miss: " in res.stderr and "customize.recipe.disable changed" in res.stderr
    m = json.loads((Path(invoke_env["IMAGEBUILD_OUTPUT"]) / "debian12-noseed" / "manifest.json").read_text())
    assert m["cache"]["install"]["reused"] and not m["cache"]["customize"]["reused"]
    assert m["inputs"]["root_fs_uuid"] == first["inputs"]["root_fs_uuid"]  # the very same installed disk
    assert "random-seed" not in m["customize_steps"]
    # the compression took the session build's compressed clusters wherever the guest data is the same
    # (recompress.py: each compared with the new disk's first), and compressed only the rest
    assert "cluster(s) taken from the artifact built on the same install" in res.stderr, res.stderr[-3000:]
    log = (Path(invoke_env["IMAGEBUILD_OUTPUT"]) / "debian12-noseed" / "build.log").read_text()
    assert "through a raw copy" not in log  # read in place, where qemu-img map puts each cluster
    # grub read nothing the change touched: its output (boot code, /boot/grub, the ESP) was put back from
    # the session build's entry instead of running grub-install and update-grub again ...
    assert "boot-loader: reused (key " in res.stderr, res.stderr[-3000:]
    # (from the build that first ran grub on this installed disk: the session's, or an earlier one it reused)
    assert m["cache"]["boot-loader"]["reused"] and m["cache"]["boot-loader"]["from_build"].startswith("debian12-")
    # ... and the image boots through both of the hybrid layout's boot paths: the BIOS one from the
    # restored MBR code and BIOS boot partition, the UEFI one from the restored ESP
    image = Path(invoke_env["IMAGEBUILD_OUTPUT"]) / "debian12-noseed" / "debian12-noseed.qcow2"
    for firmware, machine in (("bios", "pc"), ("uefi", "q35")):
        # the boot paths are what this proves: plain cells, no cloud-init seed
        boot = run_invoke(["boot-test", str(image), "--firmware", firmware, "--machine", machine, "--seed", "none"],
                          env, timeout=1800)
        assert boot.returncode == 0, (firmware, boot.stdout[-3000:], boot.stderr[-3000:])
        assert json.loads(boot.stdout)["passed"], boot.stdout[-3000:]


def test_a_change_grub_reads_runs_grub_in_the_appliance_on_the_cached_install(built_debian12, invoke_env,
                                                                              tmp_path):
    """The hotplug step off: its kernel arguments leave /etc/default/grub.d, so the boot loader's entry
    misses and grub runs again, on the cached install read through a qcow2 overlay. grub on the host
    takes only a raw disk (install/hostgrub.py), so this is the appliance's grub-install beside
    update-grub; the build's own boot test then boots the image through BIOS and UEFI."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "debian12-nohotplug.toml").write_text(
        'extends = "debian12"\n[customize]\ndisable = ["hotplug"]\n[boot_test]\nmatrix = ["bios/pc", "uefi/q35"]\n'
        'skip_checks = ["memory-hotplug", "vcpu-hotplug"]\nseeds = ["none"]\n')
    env = {**invoke_env, "IMAGEBUILD_RECIPE_PATH": str(recipes)}
    res = run_invoke(["build", "debian12-nohotplug"], env, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "install: reused (key " in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "boot-loader: " in ln]
    # explained against the session build's entry (the same install), whatever other recipes cached since
    assert any("boot-loader: built (miss: " in ln and "60-imagebuild-hotplug.cfg removed" in ln
               for ln in lines), lines or res.stderr[-3000:]
    out = Path(invoke_env["IMAGEBUILD_OUTPUT"]) / "debian12-nohotplug"
    log = (out / "build.log").read_text()
    # in the appliance, not on the host (the seal attaches the disk too, after grub: not for grub)
    assert "grub target: /dev/sd" in log and "# attach the disk for grub" not in log
    m = json.loads((out / "manifest.json").read_text())
    assert m["boot_test"]["passed"]
    assert sorted(c["cell"] for c in m["boot_test"]["cells"]) == ["bios/pc", "uefi/q35"]


def test_cache_controls_fail_before_any_work(tmp_path, invoke_env):
    env = {**invoke_env, "IMAGEBUILD_CACHE": str(tmp_path / "empty-cache"),
           "IMAGEBUILD_WORK": str(tmp_path / "work"), "IMAGEBUILD_OUTPUT": str(tmp_path / "out")}
    res = run_invoke(["build", "debian12", "--rebuild", "package"], env, timeout=300)
    assert res.returncode == 3 and "unknown stage 'package' (stages: install, customize, sparsify, boot-test)" \
        in res.stderr
    res = run_invoke(["build", "debian12", "--require-cached", "install,boot-test"], env, timeout=300)
    assert res.returncode == 3 and "--require-cached install: the cache holds no entry for it" in res.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # nothing started
    assert "Traceback" not in res.stderr

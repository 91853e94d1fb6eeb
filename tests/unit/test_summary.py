"""``invoke show``: a one-screen summary by default (imagebuild/summary.py), the whole plan with ``--json``."""

from __future__ import annotations

import json

import pytest

from imagebuild.plan import make_plan
from imagebuild.recipe import load_recipe
from imagebuild.summary import render_summary

from ..conftest import run_invoke

pytestmark = pytest.mark.unit

STAGES = ["validate", "install", "customize", "sparsify", "boot-test", "manifest"]


@pytest.fixture
def empty_cache_env(invoke_env, tmp_path):
    """The session's environment with a stage cache of its own, empty: the session's builds fill the shared
    one, and these tests read what an empty cache says."""
    (tmp_path / "cache").mkdir()
    return dict(invoke_env, IMAGEBUILD_CACHE=str(tmp_path / "cache"))


def show(env: dict[str, str], *args: str) -> str:
    res = run_invoke(["show", *args, "--offline"], env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_debian12_summary_fits_a_screen_and_names_the_keys(empty_cache_env):
    out = show(empty_cache_env, "debian12")
    lines = out.splitlines()
    assert len(lines) <= 40 and all(len(line) <= 100 for line in lines)
    assert lines[0] == "debian12: Debian 12 (bookworm) golden image"
    text = "\n".join(lines)
    assert "  recipe      recipes/debian12.toml <- recipes/debian-base.toml" in text
    assert "  image       debian 12 (family debian), firmware hybrid, 3 GiB disk, machine pc" in text
    assert "  install     bootstrap: mmdebstrap bookworm (minbase)" in text
    assert "  packages    11 (base 6, extra 1, cloud 4): net-tools lrzsz" in text
    assert "  customize   20 steps: packages, cloud-config," in text
    assert "  boot test   4 cells, 1024 MiB, 1 vCPU" in text
    assert "    uefi/q35          nocloud   virtio" in text
    assert "    secure-boot/q35   none      scsi" in text
    assert "    every seed  firmware machine" in text and "    + nova      datasource" in text
    assert "  stages      validate -> install -> customize -> sparsify -> boot-test -> manifest" in text
    # the runner's declarations (plan.STAGES): which key decides each stage, and what overlaps
    runner = " ".join(text[text.index("  runner"):].split("\n    install")[0].split())
    assert "sparsify: key artifact, beside boot-test" in runner and "install: key install" in runner
    # the session's own cache is empty: each cached stage's short key, and why it is a miss
    install = next(line for line in lines if line.startswith("    install     key "))
    assert install.endswith("not cached: no earlier entry for this stage") and len(install.split()[2]) == 12
    assert any(line.startswith("    artifact    key ") for line in lines)


def test_rocky9_summary_says_its_install_is_not_cached(invoke_env):
    text = show(invoke_env, "rocky9")
    assert text.startswith("rocky9: ")
    assert "  recipe      recipes/rocky9.toml <- recipes/el9-base.toml" in text
    assert "  image       rocky 9 (family el), firmware bios, 4 GiB disk, machine pc" in text
    assert "  install     vm: rocky9.ks.j2 from http://dl.rockylinux.org/vault/rocky/9.5/BaseOS/x86_64/os/" in text
    assert "  customize   20 steps (network): packages," in text
    assert "  cache       vm installs are not cached" in text


def test_json_keeps_the_whole_plan(empty_cache_env):
    plan = json.loads(show(empty_cache_env, "debian12", "--json"))
    assert set(plan) == {"recipe", "stages", "cache"}
    assert [s["stage"] for s in plan["stages"]] == STAGES
    assert plan["recipe"]["name"] == "debian12"
    assert set(plan["cache"]) == {"install", "artifact"}
    assert {"key", "cached", "miss"} <= set(plan["cache"]["install"]) and len(plan["cache"]["install"]["key"]) == 64
    assert set(json.loads(show(empty_cache_env, "rocky9", "--json"))["cache"]) == {"not_cached"}


def test_a_cached_stage_says_which_build_made_it():
    r = load_recipe("debian12")
    plan = make_plan(r)
    plan["cache"] = {"install": {"key": "a" * 64, "cached": True, "from_build": "debian12-1", "at": "2026-12-06",
                                 "boot_test": False},
                     "artifact": {"key": "b" * 64, "cached": True, "from_build": "debian12-2", "at": "2026-12-07",
                                  "boot_test": True}}
    text = render_summary(r, plan)
    assert "    install     key aaaaaaaaaaaa  cached (build debian12-1, 2026-12-06)" in text
    assert "    artifact    key bbbbbbbbbbbb  cached (build debian12-2, 2026-12-07, boot-tested)" in text
    del plan["cache"]
    assert "  cache       an abstract recipe is not built: nothing to look up" in render_summary(r, plan)

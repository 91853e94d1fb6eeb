"""Reproducible builds: a second cold build of a recipe, made as another user elsewhere on this machine would
make it, gives the same qcow2, byte for byte; on a mismatch the failure says where, from the top down
(``imagediff``: qcow2 encoding, the guest's disk, which partition, which files and how).

The default suite compares the session's build of debian12 (with its boot test, its compression beside
it, the session's package cache) with one more cold build (``--no-cache --no-boot-test``: no stage or
package cache) in another work and output directory, another time zone, umask, locale and host name
(a UTS namespace). ``scripts/repro-check`` also pins one of the two to one CPU; the matrix tier does
the same for debian13 (hybrid), debian13-uefi and debian12-bios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.imagediff import compare_images

from ..conftest import ROOT, run_invoke

OTHER = {"TZ": "Pacific/Kiritimati", "LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8"}


def build_elsewhere(recipe: str, invoke_env: dict[str, str], base: Path, *, cpus: str | None = None) -> Path:
    """``invoke build RECIPE --no-cache --no-boot-test`` under ``base``, as another user: umask 077, another
    time zone and locale, host name ``repro-other-host``; returns the output dir."""
    env = dict(invoke_env, IMAGEBUILD_OUTPUT=str(base / "output"), IMAGEBUILD_WORK=str(base / "work"), **OTHER)
    argv = ["unshare", "--uts", "sh", "-c", 'hostname repro-other-host && exec "$@"', "sh",
            *(["taskset", "-c", cpus] if cpus else []),
            sys.executable, "-m", "invoke", "build", recipe, "--no-cache", "--no-boot-test"]
    res = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, umask=0o077, timeout=3600)
    assert res.returncode == 0, res.stderr[-6000:]
    return base / "output" / recipe


def assert_same_image(first: Path, second: Path, recipe: str, work: Path) -> None:
    a, b = first / f"{recipe}.qcow2", second / f"{recipe}.qcow2"
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (first, second))
    if ma["inputs"].get("packages") != mb["inputs"].get("packages"):
        changed = {k: (ma["inputs"]["packages"].get(k), v) for k, v in mb["inputs"]["packages"].items()
                   if ma["inputs"]["packages"].get(k) != v}
        pytest.skip(f"the archive moved between the two builds (packages {changed}): not comparable")
    diff = compare_images(a, b, work=work)
    assert diff.same, "two builds of the same inputs differ:\n" + diff.explain()
    assert ma["source_date_epoch"] == mb["source_date_epoch"] and ma["seed"] == mb["seed"]
    assert ma["artifact"]["content_sha256"] == mb["artifact"]["content_sha256"]


@pytest.mark.build
def test_a_second_cold_build_elsewhere_gives_the_same_bytes(built_debian12, invoke_env, tmp_path):
    second = build_elsewhere("debian12", invoke_env, tmp_path / "elsewhere")
    assert_same_image(built_debian12, second, "debian12", tmp_path / "compare")


@pytest.mark.build
@pytest.mark.matrix
@pytest.mark.parametrize("recipe", ["debian13", "debian13-uefi", "debian12-bios"])
def test_two_cold_builds_of_each_layout_are_byte_identical(recipe, invoke_env, tmp_path):
    env = dict(invoke_env, IMAGEBUILD_OUTPUT=str(tmp_path / "first" / "output"),
               IMAGEBUILD_WORK=str(tmp_path / "first" / "work"))
    res = run_invoke(["build", recipe, "--no-cache", "--no-boot-test"], env, timeout=3600)
    assert res.returncode == 0, res.stderr[-6000:]
    second = build_elsewhere(recipe, invoke_env, tmp_path / "second", cpus="0")
    assert_same_image(tmp_path / "first" / "output" / recipe, second, recipe, tmp_path / "compare")
    assert os.path.exists(second / "sbom.spdx.json")

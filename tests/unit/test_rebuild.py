"""``verify --rebuild`` before it builds anything: a manifest that records no seed (a VM install, an older
build) is refused naming the file; the recorded recipe is the one rebuilt (not today's file); and a
package the mirror moved is named with both versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebuild.attest import VerifyFailed
from imagebuild.rebuild import package_changes, recorded_recipe
from imagebuild.recipe import load_recipe, to_data
from imagebuild.verify import Verified

pytestmark = pytest.mark.unit


def _verified(manifest: dict, tmp_path: Path) -> Verified:
    return Verified(directory=tmp_path, artifact=tmp_path / "debian12.qcow2", sha256="0" * 64,
                    content_sha256="1" * 64, signed=False, keyid=None, checked=(), manifest=manifest)


def test_a_build_without_a_seed_is_refused_before_anything_runs(tmp_path):
    manifest = {"recipe": to_data(load_recipe("centos7")), "inputs": {}}
    with pytest.raises(VerifyFailed, match="not a reproducible build") as err:
        recorded_recipe(_verified(manifest, tmp_path))
    assert str(tmp_path / "manifest.json") in str(err.value)


def test_the_recorded_recipe_is_rebuilt_not_todays(tmp_path):
    data = to_data(load_recipe("debian12"))
    data["packages"]["extra"] = [*data["packages"]["extra"], "telnet"]  # as it was resolved then
    manifest = {"recipe": json.loads(json.dumps(data)), "seed": "s", "source_date_epoch": 1}
    recipe = recorded_recipe(_verified(manifest, tmp_path))
    assert "telnet" in recipe.packages.extra and to_data(recipe) == data


def test_a_moved_package_is_named_with_both_versions():
    moved, other = package_changes({"vim": "2:9.0.1378-2", "tree": "2.1.0-1"},
                                   {"vim": "2:9.0.1378-2+deb12u1", "tree": "2.1.0-1", "wget": "1.21.3-1"})
    assert moved == ["vim 2:9.0.1378-2 → 2:9.0.1378-2+deb12u1"] and other == ["wget (absent) → 1.21.3-1"]
    assert package_changes({"vim": "1"}, {"vim": "1"}) == ([], [])

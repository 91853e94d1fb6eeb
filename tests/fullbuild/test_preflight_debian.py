"""The recipe preflight against Debian's real mirror: debian12 passes (InRelease verified with
debian-archive-keyring, every package found), a misspelt package fails in seconds naming its key."""

from __future__ import annotations

import dataclasses
import time

import pytest

from imagebuild.errors import RecipeError
from imagebuild.preflight import preflight
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.build


def test_debian12_passes_and_a_misspelt_package_is_named(tmp_path):
    recipe = load_recipe("debian12")
    start = time.monotonic()
    report = preflight(recipe, cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 60
    assert report.suites[0].suite == "bookworm" and "Debian Archive" in report.suites[0].signed_by
    assert len(report.suites[0].packages) > 50_000
    bad = dataclasses.replace(recipe, packages=dataclasses.replace(recipe.packages, extra=("qemu-guest-agnet",)))
    start = time.monotonic()
    with pytest.raises(RecipeError) as e:
        preflight(bad, cache_dir=tmp_path / "cache")
    assert time.monotonic() - start < 10  # the indexes are cached by now
    assert e.value.key == "packages.extra[0]" and "did you mean 'qemu-guest-agent'" in str(e.value)

"""The host's apt package cache for bootstrap builds: how files are named, what is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.events import Reporter
from imagebuild.install.bootstrap import installed_debs, mmdebstrap_argv, tend_apt_cache
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.unit

STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u13
Description: GNU C Library
 with a continuation line: that is not a field

Package: vim
Status: install ok installed
Architecture: amd64
Version: 2:9.0.1378-2+deb12u2

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2025b-0+deb12u2
"""


def test_installed_debs_are_named_as_apt_names_its_archives():
    assert installed_debs(STATUS) == {"libc6_2.36-9+deb12u13_amd64.deb", "vim_2%3a9.0.1378-2+deb12u2_amd64.deb",
                                      "tzdata_2025b-0+deb12u2_all.deb"}


def test_the_cache_keeps_exactly_this_systems_debs(tmp_path: Path):
    cache, root = tmp_path / "cache", tmp_path / "root"
    cache.mkdir()
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    for name in ("libc6_2.36-9+deb12u13_amd64.deb", "vim_2%3a9.0.1378-2+deb12u2_amd64.deb",
                 "vim_2%3a9.0.1378-2+deb12u1_amd64.deb", "tzdata_2025b-0+deb12u2_all.deb"):
        (cache / name).write_bytes(b"x" * 10)
    (cache / "partial").mkdir()
    before = {"libc6_2.36-9+deb12u13_amd64.deb", "vim_2%3a9.0.1378-2+deb12u1_amd64.deb"}
    info = tend_apt_cache(cache, root, before, Reporter(stream=open("/dev/null", "w")))  # noqa: SIM115
    assert sorted(p.name for p in cache.glob("*.deb")) == sorted(installed_debs(STATUS))
    assert info == {"dir": str(cache), "packages": 3, "from_cache": 1, "size": 30}


def test_mmdebstrap_gets_the_cache_through_its_sync_hooks():
    recipe = load_recipe("debian12")
    plain = mmdebstrap_argv(recipe, Path("/w/rootfs"))
    cached = mmdebstrap_argv(recipe, Path("/w/rootfs"), Path("/c/apt"))
    assert not [a for a in plain if "sync-" in a or a.startswith("--skip")]
    assert "--setup-hook=sync-in /c/apt /var/cache/apt/archives/" in cached
    assert "--customize-hook=sync-out /var/cache/apt/archives /c/apt" in cached
    assert "--skip=essential/unlink" in cached  # else mmdebstrap deletes the essential .debs first
    tail = plain[plain.index("bookworm"):]  # suite, target and sources stay last, unchanged
    assert cached[-len(tail):] == tail and set(plain) < set(cached)

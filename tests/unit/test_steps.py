"""Every registered generalization step is well-formed (virt-sysprep checks its operations likewise)."""

from __future__ import annotations

import pytest

from imagebuild.customize import STEP_NAME, all_steps, selected_steps
from imagebuild.customize.layout import fstab_entries
from imagebuild.customize.packages import parse_dpkg_status
from imagebuild.errors import RecipeError
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.unit

REQUIRED = {"ifcfg-identity", "nm-keyfile-identity", "udev-persistent-net", "ifupdown-hwaddress",
            "dhcp-leases", "machine-id", "ssh-hostkeys", "logfiles", "shell-history", "package-cache",
            "tmp-files", "installer-files", "packages", "layout", "hostname", "resolv-conf", "random-seed",
            "hotplug"}


def test_every_step_is_well_formed():
    steps = all_steps()
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED
    for s in steps:
        assert STEP_NAME.match(s.name), s.name
        assert s.summary and "\n" not in s.summary and len(s.summary) < 140
        assert callable(s.run) and callable(s.check) and s.families


def test_packages_run_before_cleanup_and_layout_last():
    order = [s.name for s in all_steps()]
    assert order.index("packages") < order.index("package-cache") < order.index("layout")
    assert order[-1] == "layout"


def test_recipe_can_disable_steps_by_name(tmp_path):
    r = load_recipe("debian12")
    assert "random-seed" in [s.name for s in selected_steps(r)]
    import dataclasses
    r2 = dataclasses.replace(r, customize=dataclasses.replace(r.customize, disable=("random-seed",)))
    assert "random-seed" not in [s.name for s in selected_steps(r2)]
    r3 = dataclasses.replace(r, customize=dataclasses.replace(r.customize, disable=("no-such-step",)))
    with pytest.raises(RecipeError, match=r"customize.disable\[0\].*unknown customize step"):
        selected_steps(r3)


def test_parse_dpkg_status():
    text = ("Package: vim\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2:9.0\n\n"
            "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
            "Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36\n"
            "Description: x\n more text: here\n")
    assert parse_dpkg_status(text) == {"vim": "2:9.0", "libc6:i386": "2.36"}


def test_fstab_entries_skip_comments():
    text = "# c\nUUID=1 / ext4 defaults 0 1\n\n/swapfile none swap sw 0 0\n"
    assert fstab_entries(text) == [(2, ["UUID=1", "/", "ext4", "defaults", "0", "1"]),
                                   (4, ["/swapfile", "none", "swap", "sw", "0", "0"])]

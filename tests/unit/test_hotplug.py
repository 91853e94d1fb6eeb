"""Hotplug readiness: the recipe keys of the live boot-test operations and what the hotplug step writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.boottest import CHECK_NAMES, _cpu_list
from imagebuild.customize.hotplug import CPU_RULE, MEMORY_ARGS, MEMORY_RULE, _rules
from imagebuild.errors import RecipeError
from imagebuild.recipe import Family, load_recipe

pytestmark = pytest.mark.unit


def recipe_file(d: Path, body: str) -> Path:
    p = d / "hp.toml"
    p.write_text('extends = "debian12"\n' + body)
    return p


@pytest.mark.parametrize("body, key, message", [
    ('[boot_test]\nmax_vcpus = 2\n', "boot_test.max_vcpus", "must be above boot_test.vcpus (2) to hot-add"),
    ('[boot_test]\nmax_vcpus = 1\n', "boot_test.max_vcpus", "between boot_test.vcpus (2) and 64"),
    ('[boot_test]\nhotplug_memory_mib = 300\n', "boot_test.hotplug_memory_mib", "multiple of 128"),
    ('[boot_test]\nballoon_mib = 900\n', "boot_test.balloon_mib", "at least 256 MiB of its 1024"),
    ('[boot_test]\ndisk_buses = ["ide"]\n', "boot_test.disk_buses[0]", "one of virtio, scsi"),
    ('[boot_test]\nskip_checks = ["cpu-hotplug"]\n', "boot_test.skip_checks[0]", "unknown check 'cpu-hotplug'"),
])
def test_live_operation_keys_are_validated(tmp_path, body, key, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(str(recipe_file(tmp_path, body)))
    assert e.value.key == key and message in str(e.value), str(e.value)


def test_a_family_that_cannot_hotplug_skips_the_check(tmp_path):
    r = load_recipe(str(recipe_file(tmp_path, '[boot_test]\nmax_vcpus = 2\nskip_checks = ["vcpu-hotplug"]\n')))
    assert r.boot_test.skip_checks == ("vcpu-hotplug",)
    assert {"vcpu-hotplug", "balloon", "memory-hotplug", "virtio"} <= set(CHECK_NAMES)


def test_rules_per_family():
    # Debian: the kernel onlines memory (MEMORY_ARGS on its command line), udev only the CPUs
    assert _rules(Family.DEBIAN).endswith(CPU_RULE) and MEMORY_RULE not in _rules(Family.DEBIAN)
    assert _rules(Family.EL).endswith(CPU_RULE + MEMORY_RULE)
    assert "online_policy=auto-movable" in MEMORY_ARGS and "memhp_default_state=online" in MEMORY_ARGS


@pytest.mark.parametrize("text, cpus", [("0", {0}), ("0-1", {0, 1}), ("0-2,4", {0, 1, 2, 4}), ("", set())])
def test_cpu_lists_as_sysfs_writes_them(text, cpus):
    assert _cpu_list(text) == cpus

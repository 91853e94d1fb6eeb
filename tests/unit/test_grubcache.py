"""The boot loader's cache entry (imagebuild/install/grubcache.py): which disk areas hold BIOS boot
code in each layout, how what grub reads is parsed into the key, and that a miss names the file.
The capture and restore run for real in tests/fullbuild/test_stage_cache.py (a customize-only
rebuild of the hybrid debian12, whose restored image is then booted through BIOS and UEFI)."""

from __future__ import annotations

import pytest

from imagebuild.cache import StageCache, describe_changes, key_of
from imagebuild.disklayout import MIB, layout_for
from imagebuild.install import grubcache
from imagebuild.recipe import Firmware

pytestmark = pytest.mark.unit

# what the inputs script printed in a debian12 (hybrid) appliance, trimmed
SAMPLE = """\
sha256 1f0e3c1e0c2b1d8c7f41f0a1d1b64a7bfb47e43f6a1e3c1a3a2f0b1d2c3e4f50  /etc/default/grub
sha256 2a2e3c1e0c2b1d8c7f41f0a1d1b64a7bfb47e43f6a1e3c1a3a2f0b1d2c3e4f51  /etc/default/grub.d/50-imagebuild.cfg
sha256 3b2e3c1e0c2b1d8c7f41f0a1d1b64a7bfb47e43f6a1e3c1a3a2f0b1d2c3e4f52  /etc/grub.d/10_linux
mode 644 /etc/default/grub
mode 644 /etc/default/grub.d/50-imagebuild.cfg
mode 755 /etc/grub.d/10_linux
boot 8193984 /boot/vmlinuz-6.1.0-41-amd64
boot 31377408 /boot/initrd.img-6.1.0-41-amd64
package grub-common 2.06-13+deb12u1 ii
package shim-signed 1.44~1+deb12u1+15.8-1~deb12u1 ii
"""


class _Guest:
    """Stands in for the appliance's shell only: returns what the real inputs script printed."""
    def __init__(self, out: str) -> None:
        self.out = out

    def command(self, argv: list[str], *, purpose: str = "") -> str:
        return self.out


def test_bios_boot_code_is_the_mbr_code_and_the_gap_or_the_bios_boot_partition():
    assert grubcache.boot_code_regions(layout_for(Firmware.BIOS)) == [(0, 440), (512, MIB - 512)]
    # hybrid: the protective MBR's code and partition 14 (3 MiB at 1 MiB); never the partition tables
    assert grubcache.boot_code_regions(layout_for(Firmware.HYBRID)) == [(0, 440), (MIB, 3 * MIB)]
    assert grubcache.boot_code_regions(layout_for(Firmware.UEFI)) == []


def test_what_grub_reads_is_parsed_per_file_package_and_boot_file():
    inputs = grubcache.read_inputs(_Guest(SAMPLE))  # type: ignore[arg-type]
    assert inputs["files"]["/etc/grub.d/10_linux"].startswith("755 3b2e")
    assert inputs["files"]["/etc/default/grub.d/50-imagebuild.cfg"].startswith("644 2a2e")
    assert inputs["boot"] == {"/boot/initrd.img-6.1.0-41-amd64": 31377408, "/boot/vmlinuz-6.1.0-41-amd64": 8193984}
    assert inputs["packages"]["grub-common"] == "2.06-13+deb12u1 ii"


def test_a_changed_grub_setting_makes_a_new_key_and_the_miss_names_the_file(tmp_path):
    before = {"stage": "boot-loader", "install": "i" * 64, "uuids": {"root": "u1"},
              "image": grubcache.read_inputs(_Guest(SAMPLE))}  # type: ignore[arg-type]
    changed = SAMPLE.replace("2a2e3c", "9a9e3c").replace("mode 644 /etc/default/grub.d/50",
                                                          "mode 600 /etc/default/grub.d/50")
    after = {**before, "image": grubcache.read_inputs(_Guest(changed))}  # type: ignore[arg-type]
    assert key_of(before) != key_of(after)
    assert describe_changes(before, after) == "image.files./etc/default/grub.d/50-imagebuild.cfg changed"
    new_kernel = {**before, "image": grubcache.read_inputs(_Guest(  # type: ignore[arg-type]
        SAMPLE + "boot 8200000 /boot/vmlinuz-6.1.0-42-amd64\n"))}
    assert describe_changes(before, new_kernel) == "image.boot./boot/vmlinuz-6.1.0-42-amd64 added"
    other_disk = {**before, "uuids": {"root": "u2"}}
    assert describe_changes(before, other_disk) == "uuids.root u1 → u2"
    cache = StageCache(tmp_path, max_bytes=1 << 30)
    cache.store("boot-loader", key_of(before), inputs=before, build_id="b-1", recipe="r",
                files={"grub.tar": lambda d: d.write_bytes(b"tar")})
    assert cache.lookup("boot-loader", key_of(after)) is None
    assert "50-imagebuild.cfg changed" in cache.explain_miss("boot-loader", "r", after)

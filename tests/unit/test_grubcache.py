"""The boot loader's cache entry (imagebuild/install/grubcache.py): which disk areas hold BIOS boot
code in each layout, what grub reads that goes into the key (read from a tree, as the appliance's file
calls read the image), and that a miss names the file.
The capture and restore run for real in tests/fullbuild/test_stage_cache.py (a customize-only
rebuild of the hybrid debian12, whose restored image is then booted through BIOS and UEFI)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from imagebuild.cache import StageCache, describe_changes, key_of
from imagebuild.dirguest import DirGuest
from imagebuild.disklayout import MIB, layout_for
from imagebuild.install import grubcache
from imagebuild.recipe import Firmware

pytestmark = pytest.mark.unit

STATUS = """\
Package: grub-common
Status: install ok installed
Version: 2.06-13+deb12u1
Description: GRand Unified Bootloader (common files)
 a continuation line: not a field

Package: grub-legacy
Status: purge ok not-installed

Package: shim-signed
Status: install ok installed
Version: 1.44~1+deb12u1+15.8-1~deb12u1

Package: vim
Status: install ok installed
Version: 2:9.0.1378-2
"""


def image_tree(root: Path) -> DirGuest:
    """What grub reads in a debian12 image, in a tree (the customize steps' DirGuest reads it as the
    appliance's file calls would)."""
    for path, text, mode in (("etc/default/grub", "GRUB_TIMEOUT=1\n", 0o644),
                             ("etc/default/grub.d/50-imagebuild.cfg", 'GRUB_CMDLINE_LINUX=""\n', 0o644),
                             ("etc/grub.d/10_linux", "#!/bin/sh\n", 0o755),
                             ("usr/lib/os-release", 'ID=debian\nVERSION_ID="12"\n', 0o644),
                             ("boot/vmlinuz-6.1.0-41-amd64", "k" * 8193, 0o644),
                             ("boot/initrd.img-6.1.0-41-amd64", "i" * 31377, 0o644),
                             ("var/lib/dpkg/status", STATUS, 0o644)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        (root / path).chmod(mode)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "boot/grub").mkdir()
    return DirGuest(root)


def test_bios_boot_code_is_the_mbr_code_and_the_gap_or_the_bios_boot_partition():
    assert grubcache.boot_code_regions(layout_for(Firmware.BIOS)) == [(0, 440), (512, MIB - 512)]
    # hybrid: the protective MBR's code and partition 14 (3 MiB at 1 MiB); never the partition tables
    assert grubcache.boot_code_regions(layout_for(Firmware.HYBRID)) == [(0, 440), (MIB, 3 * MIB)]
    assert grubcache.boot_code_regions(layout_for(Firmware.UEFI)) == []


def test_what_grub_reads_is_each_config_file_boot_file_and_grub_package(tmp_path):
    inputs = grubcache.read_inputs(image_tree(tmp_path))  # type: ignore[arg-type]
    assert inputs["files"]["/etc/grub.d/10_linux"] == "755 " + hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    assert inputs["files"]["/etc/default/grub.d/50-imagebuild.cfg"].startswith("644 ")
    assert inputs["files"]["/etc/os-release"].startswith("644 ")  # the symlink followed, as grub does
    assert inputs["boot"] == {"/boot/initrd.img-6.1.0-41-amd64": 31377, "/boot/vmlinuz-6.1.0-41-amd64": 8193}
    assert inputs["packages"] == {"grub-common": "2.06-13+deb12u1 install ok installed",
                                  "shim-signed": "1.44~1+deb12u1+15.8-1~deb12u1 install ok installed"}


def test_a_changed_grub_setting_makes_a_new_key_and_the_miss_names_the_file(tmp_path):
    guest = image_tree(tmp_path)
    before = {"stage": "boot-loader", "install": "i" * 64, "uuids": {"root": "u1"},
              "image": grubcache.read_inputs(guest)}  # type: ignore[arg-type]
    cfg = tmp_path / "etc/default/grub.d/50-imagebuild.cfg"
    cfg.write_text('GRUB_CMDLINE_LINUX="memhp_default_state=online"\n')
    cfg.chmod(0o600)
    after = {**before, "image": grubcache.read_inputs(guest)}  # type: ignore[arg-type]
    assert key_of(before) != key_of(after)
    assert describe_changes(before, after) == "image.files./etc/default/grub.d/50-imagebuild.cfg changed"
    (tmp_path / "boot/vmlinuz-6.1.0-42-amd64").write_bytes(b"k" * 8200)
    new_kernel = {**after, "image": grubcache.read_inputs(guest)}  # type: ignore[arg-type]
    assert describe_changes(after, new_kernel) == "image.boot./boot/vmlinuz-6.1.0-42-amd64 added"
    (tmp_path / "etc/grub.d/10_linux").chmod(0o644)  # update-grub would no longer run it
    off = {**new_kernel, "image": grubcache.read_inputs(guest)}  # type: ignore[arg-type]
    assert describe_changes(new_kernel, off) == "image.files./etc/grub.d/10_linux changed"
    status = tmp_path / "var/lib/dpkg/status"
    status.write_text(STATUS.replace("2.06-13+deb12u1", "2.06-13+deb12u2"))
    upgraded = {**off, "image": grubcache.read_inputs(guest)}  # type: ignore[arg-type]
    assert describe_changes(off, upgraded).startswith("image.packages.grub-common")
    other_disk = {**before, "uuids": {"root": "u2"}}
    assert describe_changes(before, other_disk) == "uuids.root u1 → u2"
    cache = StageCache(tmp_path / "cache", max_bytes=1 << 30)
    cache.store("boot-loader", key_of(before), inputs=before, build_id="b-1", recipe="r",
                files={"grub.tar": lambda d: d.write_bytes(b"tar")})
    assert cache.lookup("boot-loader", key_of(after)) is None
    assert "50-imagebuild.cfg changed" in cache.explain_miss("boot-loader", "r", after)

"""The bootstrap installer's checks of the tree mmdebstrap left, before it goes into the disk: the
initramfs was made once at the end (update-initramfs restored from its diversion), for every kernel."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from imagebuild.errors import InstallFailed
from imagebuild.events import NULL_REPORTER
from imagebuild.install.bootstrap import INITRAMFS_HOLD, INITRAMFS_ONCE, BootstrapInstaller, mmdebstrap_argv
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.unit


def tree(tmp_path: Path, *, initrd: bool = True, diverted: bool = False) -> Path:
    root = tmp_path / "rootfs"
    (root / "boot").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-57-amd64").write_bytes(b"k")
    if initrd:
        (root / "boot/initrd.img-6.1.0-57-amd64").write_bytes(b"i")
    (root / "usr/sbin/update-initramfs").write_text("#!/bin/sh\n")
    if diverted:
        (root / "var/lib/dpkg/diversions").write_text(
            "/usr/sbin/update-initramfs\n/usr/sbin/update-initramfs.imagebuild\n:\n")
    return root


def configure(root: Path) -> None:
    build = SimpleNamespace(recipe=load_recipe("debian12-bios"), reporter=NULL_REPORTER)
    BootstrapInstaller()._configure(root, "2fbfe591-aa4a-49e8-bf63-be55ae634774", "", build)  # type: ignore[arg-type]


def test_a_diversion_left_behind_is_refused(tmp_path):
    with pytest.raises(InstallFailed, match="update-initramfs is still diverted"):
        configure(tree(tmp_path, diverted=True))


def test_a_kernel_without_its_initramfs_is_refused(tmp_path):
    with pytest.raises(InstallFailed, match="no initramfs for kernel 6.1.0-57-amd64"):
        configure(tree(tmp_path, initrd=False))


def test_the_initramfs_is_held_until_every_package_is_in():
    argv = mmdebstrap_argv(load_recipe("debian12"), Path("/w/rootfs"))
    hold, once = argv.index(INITRAMFS_HOLD), argv.index(INITRAMFS_ONCE)
    assert INITRAMFS_HOLD.startswith("--essential-hook=")    # after the essential set, before the rest
    assert INITRAMFS_ONCE.startswith("--customize-hook=")    # after every package
    assert hold < once < argv.index("bookworm")
    assert "update-initramfs -c -k all" in INITRAMFS_ONCE and "--remove" in INITRAMFS_ONCE

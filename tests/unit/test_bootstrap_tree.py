"""The bootstrap installer's checks of the tree mmdebstrap left, before it goes into the disk: the
initramfs was made once (update-initramfs restored from its diversion; how it is made beside the other
packages: test_initramfs_beside.py), for every kernel, with the recipe's initramfs policy in place."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from imagebuild.errors import InstallFailed
from imagebuild.events import NULL_REPORTER
from imagebuild.install import initramfs
from imagebuild.install.bootstrap import (
    BUILD_ONLY_CONFIG,
    BootstrapInstaller,
    mmdebstrap_argv,
)
from imagebuild.recipe import load_recipe

from .test_firmware import recipe_file

pytestmark = pytest.mark.unit


def tree(tmp_path: Path, *, initrd: bool = True, diverted: bool = False, policy: bool = True) -> Path:
    root = tmp_path / "rootfs"
    (root / "boot").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-57-amd64").write_bytes(b"k")
    if initrd:
        (root / "boot/initrd.img-6.1.0-57-amd64").write_bytes(b"i")
    (root / "usr/sbin/update-initramfs").write_text("#!/bin/sh\n")
    if policy:
        initramfs.stage("disk", root)  # what the install's hook copies in
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


def test_a_tree_without_its_initramfs_policy_is_refused(tmp_path):
    with pytest.raises(InstallFailed, match="lacks /etc/initramfs-tools/conf.d/imagebuild-modules, "
                                            "/etc/initramfs-tools/hooks/imagebuild-modules"):
        configure(tree(tmp_path, policy=False))


def test_debian_s_default_policy_copies_nothing_in(tmp_path):
    most = load_recipe(str(recipe_file(tmp_path, '[install.bootstrap]\ninitramfs_modules = "most"\n')))
    hooks = [a for a in mmdebstrap_argv(most, Path("/w/rootfs")) if "update-initramfs" in a]
    assert len(hooks) == 3 and initramfs.files("most") == {}
    assert not any("initramfs-policy" in h for h in hooks)
    # and a tree without the policy's files is not refused for them (the next check speaks instead)
    build = SimpleNamespace(recipe=most, reporter=NULL_REPORTER)
    with pytest.raises(InstallFailed, match="no initramfs for kernel"):
        BootstrapInstaller()._configure(tree(tmp_path, initrd=False, policy=False), "2fbfe591-aa4a-49e8-bf63-"
                                        "be55ae634774", "", build)  # type: ignore[arg-type]


def test_the_policy_files_as_initramfs_tools_reads_them(tmp_path):
    initramfs.stage("disk", tmp_path)
    conf = (tmp_path / initramfs.CONF.lstrip("/")).read_text()
    hook = tmp_path / initramfs.HOOK.lstrip("/")
    assert "\nMODULES=list\n" in conf
    assert hook.stat().st_mode & 0o777 == 0o755 and hook.read_text().startswith("#!/bin/sh\n")
    text = hook.read_text()
    # initramfs-tools' own categories of MODULES=most, all but "net"; the clouds' paravirtual NICs
    categories = next(ln for ln in text.splitlines() if ln.startswith("auto_add_modules ")).split()[1:]
    assert categories == ["base", "ide", "scsi", "block", "ata", "dasd", "firewire", "mmc", "usb_storage", "fb"]
    assert "manual_add_modules virtio_net xen-netfront hv_netvsc vmxnet3 ena gve\n" in text
    assert text.index("auto_add_modules base") < text.index("hidden_dep_add_modules\n")
    # a valid sh script, and it answers initramfs-tools' prereqs query with nothing
    import subprocess
    subprocess.run(["sh", "-n", str(hook)], check=True)
    out = subprocess.run(["sh", str(hook), "prereqs"], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ""


def test_the_virtual_policy_names_a_virtual_machines_drivers_and_no_category(tmp_path):
    """The default: the disk controllers of every hypervisor and cloud, ext4, the paravirtual NICs and a
    USB keyboard, by name (with their dependencies); none of initramfs-tools' whole categories."""
    assert load_recipe("debian12").install.bootstrap.initramfs_modules == "virtual"
    initramfs.stage("virtual", tmp_path)
    assert "\nMODULES=list\n" in (tmp_path / initramfs.CONF.lstrip("/")).read_text()
    text = (tmp_path / initramfs.HOOK.lstrip("/")).read_text()
    assert "auto_add_modules" not in text
    named = [m for ln in text.splitlines() if ln.startswith("manual_add_modules ") for m in ln.split()[1:]]
    assert set(named) == {*initramfs.VIRTUAL_DISKS, "ext4", *initramfs.CLOUD_NICS, *initramfs.KEYBOARDS}
    # the post-check's list of the clouds' disk drivers is part of it
    from imagebuild.customize.hotplug import CLOUD_DISK_DRIVERS
    assert set(CLOUD_DISK_DRIVERS) <= set(named)
    assert text.index("manual_add_modules") < text.index("hidden_dep_add_modules\n")
    import subprocess
    subprocess.run(["sh", "-n", str(tmp_path / initramfs.HOOK.lstrip("/"))], check=True)


def test_an_unknown_initramfs_policy_names_the_key(tmp_path):
    from imagebuild.errors import RecipeError
    path = recipe_file(tmp_path, '[install.bootstrap]\ninitramfs_modules = "dep"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    assert (e.value.file, e.value.key) == (str(path), "install.bootstrap.initramfs_modules")
    assert "must be one of virtual, disk, most, not 'dep'" in str(e.value)


def test_mmdebstrap_s_build_time_settings_do_not_stay_in_the_image(tmp_path):
    # --dpkgopt=force-unsafe-io and --aptopt land in 99mmdebstrap files for good (mmdebstrap's manual);
    # dpkg without fsync is for the build, not for the upgrades of a running guest
    root = tree(tmp_path)
    argv = mmdebstrap_argv(load_recipe("debian12"), Path("/w/rootfs"))
    assert "--dpkgopt=force-unsafe-io" in argv
    for path in BUILD_ONLY_CONFIG:
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text("force-unsafe-io\n")
    (root / "etc/dpkg/dpkg.cfg.d/excludes").write_text("path-exclude=/usr/share/doc/*\n")  # not ours
    unit = root / "lib/systemd/system/systemd-networkd.service"   # what configure enables (systemctl --root)
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    configure(root)
    assert not any((root / p.lstrip("/")).exists() for p in BUILD_ONLY_CONFIG)
    assert (root / "etc/dpkg/dpkg.cfg.d/excludes").exists()

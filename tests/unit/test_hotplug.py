"""Hotplug readiness: the recipe keys of the live boot-test operations and what the hotplug step writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.boottest import check_names, validate_skips
from imagebuild.boottest.checks.live import _cpu_list
from imagebuild.customize.hotplug import CLOUD_DISK_DRIVERS, CPU_RULE, MEMORY_ARGS, MEMORY_RULE, _rules
from imagebuild.errors import RecipeError
from imagebuild.recipe import Family, load_recipe

from .test_firmware import recipe_file

pytestmark = pytest.mark.unit



@pytest.mark.parametrize("body, key, message", [
    ('[boot_test]\nmax_vcpus = 1\n', "boot_test.max_vcpus", "must be above boot_test.vcpus (1) to hot-add"),
    ('[boot_test]\nmax_vcpus = 0\n', "boot_test.max_vcpus", "between boot_test.vcpus (1) and 64"),
    ('[boot_test]\nhotplug_memory_mib = 300\n', "boot_test.hotplug_memory_mib", "multiple of 128"),
    ('[boot_test]\nballoon_mib = 900\n', "boot_test.balloon_mib", "at least 256 MiB of its 1024"),
    ('[boot_test]\ndisk_buses = ["ide"]\n', "boot_test.disk_buses[0]", "one of virtio, scsi"),
    ('[boot_test]\nparallel = 0\n', "boot_test.parallel", "between 1 and 8"),
    ('[boot_test]\nstall_seconds = 5\n', "boot_test.stall_seconds", "0 (no stall watch) or at least 10"),
    ('[boot_test]\nstall_retries = 4\n', "boot_test.stall_retries", "must be 0 to 3"),
])
def test_live_operation_keys_are_validated(tmp_path, body, key, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(str(recipe_file(tmp_path, body)))
    assert e.value.key == key and message in str(e.value), str(e.value)


def test_an_unknown_check_is_named_before_any_vm(tmp_path):
    # the check names live in the boot test's registry: the recipe model does not import it (no cycle),
    # the build's validation (pipeline.validate, invoke validate, invoke show) asks it
    r = load_recipe(str(recipe_file(tmp_path, '[boot_test]\nskip_checks = ["cpu-hotplug"]\n')))
    with pytest.raises(RecipeError) as e:
        validate_skips(r)
    assert e.value.key == "boot_test.skip_checks[0]" and "unknown check 'cpu-hotplug'" in str(e.value)


def test_a_family_that_cannot_hotplug_skips_the_check(tmp_path):
    r = load_recipe(str(recipe_file(tmp_path, '[boot_test]\nmax_vcpus = 1\nskip_checks = ["vcpu-hotplug"]\n')))
    assert r.boot_test.skip_checks == ("vcpu-hotplug",)
    assert {"vcpu-hotplug", "balloon", "memory-hotplug", "virtio"} <= set(check_names())


def test_rules_per_family():
    # Debian: the kernel onlines memory (MEMORY_ARGS on its command line), udev only the CPUs
    assert _rules(Family.DEBIAN).endswith(CPU_RULE) and MEMORY_RULE not in _rules(Family.DEBIAN)
    assert _rules(Family.EL).endswith(CPU_RULE + MEMORY_RULE)
    assert "online_policy=auto-movable" in MEMORY_ARGS and "memhp_default_state=online" in MEMORY_ARGS


@pytest.mark.parametrize("text, cpus", [("0", {0}), ("0-1", {0, 1}), ("0-2,4", {0, 1, 2, 4}), ("", set())])
def test_cpu_lists_as_sysfs_writes_them(text, cpus):
    assert _cpu_list(text) == cpus


def _initrd(path: Path, drivers: tuple[str, ...]) -> None:
    """A real (tiny) initramfs: a gzip'd newc cpio holding empty .ko files where Debian puts them."""
    import gzip
    import subprocess
    root = path.parent / "initrd-root"
    for d in drivers:
        ko = root / f"usr/lib/modules/6.1.0-1-amd64/kernel/drivers/x/{d}.ko"
        ko.parent.mkdir(parents=True, exist_ok=True)
        ko.write_bytes(b"")
    names = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True, text=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names.encode(),
                             check=True, capture_output=True).stdout
    path.write_bytes(gzip.compress(archive))


def test_hotplug_step_and_its_check_on_a_tree(tmp_path: Path) -> None:
    from imagebuild.customize import STEPS, StepContext, all_steps
    from imagebuild.dirguest import DirGuest
    all_steps()
    step = STEPS["hotplug"]
    root = tmp_path / "root"
    (root / "boot/grub").mkdir(parents=True)
    grub = "menuentry 'Debian' {\n\tlinux /boot/vmlinuz-6.1.0-1-amd64 root=UUID=x ro console=ttyS0\n}\n"
    (root / "boot/grub/grub.cfg").write_text(grub)
    _initrd(root / "boot/initrd.img-6.1.0-1-amd64", ("virtio_blk", "virtio_net"))
    guest, ctx = DirGuest(root), StepContext(load_recipe("debian12"), network=False)
    problems = step.check(guest, ctx)
    assert any("80-imagebuild-hotplug.rules is missing" in p for p in problems)
    assert any("without 'memhp_default_state=online" in p for p in problems)
    assert any("initrd.img-6.1.0-1-amd64 lacks virtio_scsi" in p for p in problems)
    step.run(guest, ctx)
    assert MEMORY_ARGS in (root / "etc/default/grub.d/60-imagebuild-hotplug.cfg").read_text()
    # what update-grub makes of it (boot_config runs it after the steps), and a complete initramfs
    (root / "boot/grub/grub.cfg").write_text(grub.replace("console=ttyS0", f"console=ttyS0 {MEMORY_ARGS}"))
    _initrd(root / "boot/initrd.img-6.1.0-1-amd64", ("virtio_blk", "virtio_scsi", "virtio_net", "nvme"))
    problems = step.check(guest, ctx)
    # a Debian initramfs must also find the other clouds' disks (SATA, Xen, Hyper-V, VMware) and ext4
    assert problems == ["/boot/initrd.img-6.1.0-1-amd64 lacks ahci, ata_piix, sd_mod, xen-blkfront, hv_storvsc, "
                        "vmw_pvscsi, mptspi, ext4: a cloud's disk or virtio NIC may not be found at boot"], problems
    _initrd(root / "boot/initrd.img-6.1.0-1-amd64", ("virtio_blk", "virtio_scsi", "virtio_net", *CLOUD_DISK_DRIVERS))
    assert step.check(guest, ctx) == []
    # an initramfs the reader cannot list fails the check, saying why
    (root / "boot/initrd.img-6.1.0-1-amd64").write_bytes(b"PK\x03\x04 not an initramfs")
    assert step.check(guest, ctx) == ["/boot/initrd.img-6.1.0-1-amd64 cannot be read: byte 0 starts neither a cpio "
                                      "archive nor a compressed stream the kernel unpacks (504b0304206e)"]
    assert (root / "etc/udev/rules.d/80-imagebuild-hotplug.rules").read_text() == _rules(Family.DEBIAN)

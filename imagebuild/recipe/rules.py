"""The rules a recipe obeys beyond its types, each failure naming the file and key that broke it; every
rule is checked and all that fail are raised together."""

from __future__ import annotations

import re
from typing import Any

from ..disklayout import Firmware, layout_for
from ..errors import RecipeError, raise_all
from .convert import origin_of
from .schema import (
    CLAIMED_CELLS,
    DATASOURCES,
    DISK_BUSES,
    GLANCE_RESERVED,
    GLANCE_VISIBILITIES,
    INITRAMFS_MODULES,
    NAME_RE,
    PROVEN_PROPERTIES,
    Backend,
    BootFirmware,
    Cell,
    Family,
    Machine,
    Recipe,
    SeedKind,
    publish_firmware,
)

PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+:_@-]*$")
LOGIN_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The smallest root filesystem a golden image is given beside its boot partitions.
MIN_ROOT_MIB = 1024


def validate(recipe: Recipe, origins: dict[str, str], leaf: str) -> None:
    """Rules beyond types, each naming the key."""
    problems: list[RecipeError] = []  # every rule is checked; all that fail are raised together

    def check(ok: bool, key: str, msg: str) -> None:
        if not ok:
            problems.append(RecipeError(msg, file=origin_of(origins, key, leaf), key=key))

    check(NAME_RE.match(recipe.name) is not None, "name", "recipe file names must be lower-case")
    check(1 <= recipe.image.disk_gib <= 2048, "image.disk_gib", "must be between 1 and 2048")
    check(recipe.image.compat in ("0.10", "1.1"), "image.compat", "must be '0.10' or '1.1'")
    check(recipe.image.min_ram_mib >= 128, "image.min_ram_mib", "must be at least 128")
    for group in ("base", "extra"):
        for i, pkg in enumerate(getattr(recipe.packages, group)):
            check(PACKAGE_RE.match(pkg) is not None, f"packages.{group}[{i}]",
                  f"'{pkg}' is not a valid package name")
    _validate_cloud(recipe, check)
    for i, pkg in enumerate(recipe.install.bootstrap.include):
        check(PACKAGE_RE.match(pkg) is not None, f"install.bootstrap.include[{i}]",
              f"'{pkg}' is not a valid package name")
    bt = recipe.boot_test
    check(bt.memory_mib >= 256, "boot_test.memory_mib", "must be at least 256")
    check(1 <= bt.vcpus <= 64, "boot_test.vcpus", "must be between 1 and 64")
    check(bt.timeout_seconds >= 10, "boot_test.timeout_seconds", "must be at least 10")
    check(bt.tcg_factor >= 1, "boot_test.tcg_factor", "must be at least 1")
    check(bt.stall_seconds == 0 or bt.stall_seconds >= 10, "boot_test.stall_seconds",
          "must be 0 (no stall watch) or at least 10")
    check(0 <= bt.stall_retries <= 3, "boot_test.stall_retries", "must be 0 to 3")
    check(bt.vcpus <= bt.max_vcpus <= 64, "boot_test.max_vcpus",
          f"must be between boot_test.vcpus ({bt.vcpus}) and 64")
    check(bt.max_vcpus > bt.vcpus or "vcpu-hotplug" in bt.skip_checks, "boot_test.max_vcpus",
          f"must be above boot_test.vcpus ({bt.vcpus}) to hot-add a vCPU (or skip_checks = [\"vcpu-hotplug\"])")
    check(bt.hotplug_memory_mib >= 128 and bt.hotplug_memory_mib % 128 == 0, "boot_test.hotplug_memory_mib",
          "must be a multiple of 128 (the guest's memory block size), at least 128")
    check(0 < bt.balloon_mib <= bt.memory_mib - 256, "boot_test.balloon_mib",
          f"must leave the guest at least 256 MiB of its {bt.memory_mib} (boot_test.memory_mib)")
    for i, bus in enumerate(bt.disk_buses):
        check(bus in DISK_BUSES, f"boot_test.disk_buses[{i}]", f"must be one of {', '.join(DISK_BUSES)}")
    check(bool(bt.disk_buses), "boot_test.disk_buses", "must name at least one bus")
    check(1 <= bt.parallel <= 8, "boot_test.parallel", "must be between 1 and 8 (cells booted at once)")
    gl = recipe.publish.glance
    check(gl.visibility in GLANCE_VISIBILITIES, "publish.glance.visibility",
          "must be one of " + ", ".join(GLANCE_VISIBILITIES))
    check(gl.keep >= 0, "publish.glance.keep", "must be 0 (keep all) or more")
    check(gl.method in ("auto", "glance-direct", "upload"), "publish.glance.method",
          "must be 'auto', 'glance-direct' or 'upload'")
    check(gl.timeout_seconds >= 10, "publish.glance.timeout_seconds", "must be at least 10")
    for i, tag in enumerate(gl.tags + ((gl.latest_tag,) if gl.latest_tag else ())):
        check(0 < len(tag) <= 255 and tag.strip() == tag, f"publish.glance.tags[{i}]",
              f"'{tag}' is not a usable Glance tag (1-255 characters, no outer spaces)")
    for key in gl.properties:
        check(key not in GLANCE_RESERVED and not key.startswith(("imagebuild_", "os_glance")),
              f"publish.glance.properties.{key}",
              "is set by Glance or by imagebuild itself (provenance) and cannot be overridden")
        check(key not in PROVEN_PROPERTIES, f"publish.glance.properties.{key}",
              "is set from the boot-test cells that passed: choose it with publish.firmware and "
              "image.machine_type")
    check(recipe.publish.ovirt.timeout_seconds >= 10, "publish.ovirt.timeout_seconds",
          "must be at least 10")
    _validate_firmware(recipe, check)
    if recipe.abstract:
        raise_all(problems)
        return
    if recipe.install.backend is Backend.BOOTSTRAP:
        check(recipe.image.family is Family.DEBIAN, "install.backend",
              "the bootstrap backend builds Debian-family images only (mmdebstrap)")
        b = recipe.install.bootstrap
        check(bool(re.match(r"^https?://", b.mirror)), "install.bootstrap.mirror", "must be an http(s) URL")
        check(b.suite not in ("stable", "testing", "unstable", "oldstable"), "install.bootstrap.suite",
              "name the release (e.g. 'bookworm'), not a moving alias: the image must be reproducible")
        check(b.variant in ("minbase", "important", "required", "standard", "apt", "essential"),
              "install.bootstrap.variant", f"unknown mmdebstrap variant '{b.variant}'")
        check(b.initramfs_modules in INITRAMFS_MODULES, "install.bootstrap.initramfs_modules",
              f"must be one of {', '.join(INITRAMFS_MODULES)}, not '{b.initramfs_modules}'")
    else:
        _validate_vm(recipe, check)
        check(recipe.image.firmware is Firmware.BIOS, "image.firmware",
              "a VM install (kickstart/preseed) makes BIOS (MBR) images so far; UEFI and hybrid layouts "
              "are made by the bootstrap installer")
    raise_all(problems)


def _validate_cloud(recipe: Recipe, check: Any) -> None:
    cl = recipe.cloud
    for i, pkg in enumerate(cl.packages):
        check(PACKAGE_RE.match(pkg) is not None, f"cloud.packages[{i}]", f"'{pkg}' is not a valid package name")
    for i, ds in enumerate(cl.datasources):
        check(ds in DATASOURCES, f"cloud.datasources[{i}]",
              f"unknown cloud-init datasource '{ds}' (known: {', '.join(sorted(DATASOURCES))})")
    real = [ds for ds in cl.datasources if ds != "None"]
    check(len(real) >= 3 and list(cl.datasources[-1:]) == ["None"] and "None" not in cl.datasources[:-1],
          "cloud.datasources", "needs three or more datasources, then \"None\" last: with one (or one and None) "
          "cloud-init skips ds-identify's detection and waits on that one source at every boot")
    check(len(set(cl.datasources)) == len(cl.datasources), "cloud.datasources", "names a datasource twice")
    check(cl.growfs is False or not (recipe.image.family is Family.EL and recipe.image.os_version == "7"),
          "cloud.growfs", "x-systemd.growfs needs systemd 236 or newer; EL7 has 219 (cloud-init's growpart "
          "and resizefs grow its root)")
    check(0 < len(recipe.boot_test.seeds) <= len(SeedKind), "boot_test.seeds",
          f"must name 1 to {len(SeedKind)} seed kinds")
    check(len(set(recipe.boot_test.seeds)) == len(recipe.boot_test.seeds), "boot_test.seeds", "names a kind twice")
    check(recipe.boot_test.grow_gib > recipe.image.disk_gib, "boot_test.grow_gib",
          f"must be above image.disk_gib ({recipe.image.disk_gib}): the seeded cells prove / grows into it")
    if not cl.enabled:
        return
    check(bool(cl.default_user), "cloud.default_user", "a cloud image needs a default user (the key's login)")
    check(not cl.default_user or (LOGIN_RE.match(cl.default_user) is not None and cl.default_user != "root"),
          "cloud.default_user", f"'{cl.default_user}' is not a valid login name (lower-case letters, digits, "
          "_ and -, starting with a letter or _, at most 32; not root)")
    check("cloud-init" in cl.packages, "cloud.packages", "must include cloud-init")


def _validate_firmware(recipe: Recipe, check: Any) -> None:
    """Disk layout, boot-test matrix and published firmware must agree with each other."""
    img = recipe.image
    root_mib = img.disk_gib * 1024 - layout_for(img.firmware).overhead_mib
    check(root_mib >= MIN_ROOT_MIB, "image.disk_gib",
          f"{img.disk_gib} GiB leaves {root_mib} MiB for / beside the {img.firmware} boot partitions; "
          f"/ needs at least {MIN_ROOT_MIB} MiB")
    claimed = CLAIMED_CELLS[img.firmware]
    unparsed = False  # check() collects rather than raises: cells() below would raise on a bad cell
    for i, text in enumerate(recipe.boot_test.matrix):
        try:
            cell = Cell.parse(text)
        except ValueError as exc:
            check(False, f"boot_test.matrix[{i}]", str(exc))
            unparsed = True
            continue
        check((cell.firmware, cell.machine) in claimed, f"boot_test.matrix[{i}]",
              f"'{cell}' cannot boot a {img.firmware} image (its cells: "
              + ", ".join(str(Cell(f, m)) for f, m in claimed) + ")")
    published = publish_firmware(recipe)
    check(published is not None, "publish.firmware",
          f"must be 'auto' or one of {', '.join(f.value for f in BootFirmware)} that a {img.firmware} "
          f"image can boot, not {recipe.publish.firmware!r}")
    if published is not None:
        cells = recipe.boot_test.cells(img.firmware) if recipe.boot_test.matrix and not unparsed else ()
        check(not cells or any(c.firmware is published for c in cells), "boot_test.matrix",
              f"has no {published} cell, so the {published} firmware that publish.firmware advertises "
              "could never be proven")
        check(published is BootFirmware.BIOS or img.machine_type is Machine.Q35, "publish.firmware",
              f"{published} is booted on q35 only, and image.machine_type is {img.machine_type}: "
              "set machine_type = \"q35\" in [image]")


def _validate_vm(recipe: Recipe, check: Any) -> None:
    """The VM backend's rules (answer-file contents are checked by ``answerfile.validate_recipe``)."""
    vm = recipe.install.vm
    check(bool(vm.template), "install.vm.template", "a VM install needs an answer-file template")
    # The template's suffix names the installer: a kickstart drives anaconda (or anything that reads
    # one, like the tests' scripted installer), a preseed drives debian-installer.
    check(vm.template.endswith((".ks.j2", ".preseed.j2")), "install.vm.template",
          f"an answer-file template is a '*.ks.j2' kickstart or a '*.preseed.j2' preseed, not '{vm.template}'")
    check(not vm.template.endswith(".preseed.j2") or recipe.image.family is Family.DEBIAN,
          "install.vm.template", "a preseed drives debian-installer: only for family 'debian'")
    check(not vm.template.endswith(".ks.j2") or recipe.image.family is Family.EL or bool(vm.kickstart_syntax),
          "install.vm.kickstart_syntax", "a kickstart for a non-EL family must name its pykickstart syntax")
    check(bool(vm.tree_url) != bool(vm.iso_url), "install.vm.iso_url" if vm.iso_url else "install.vm.tree_url",
          "set exactly one install source: install.vm.tree_url or install.vm.iso_url "
          "(a recipe extending a tree recipe sets tree_url = \"\")")
    for key in ("tree_url", "iso_url", "iso_checksums_url"):
        value = getattr(vm, key)
        check(not value or bool(re.match(r"^(https?|file)://", value)), f"install.vm.{key}",
              "must be an http(s) or file URL")
    check(not vm.iso_checksums_url or bool(vm.iso_url), "install.vm.iso_checksums_url",
          "only for an install ISO (install.vm.iso_url)")
    check(vm.iso_sha256 == "" or SHA256_RE.match(vm.iso_sha256) is not None, "install.vm.iso_sha256",
          "must be a sha256 (64 lower-case hex digits)")
    for key in ("kernel", "initrd"):
        path = getattr(vm, key)
        check(not path.startswith("/") and ".." not in path.split("/"), f"install.vm.{key}",
              "must be a path inside the install tree")
    for key in ("kernel_sha256", "initrd_sha256"):
        value = getattr(vm, key)
        check(value == "" or SHA256_RE.match(value) is not None, f"install.vm.{key}",
              "must be a sha256 (64 lower-case hex digits)")
    for name in vm.variables:
        check(VARIABLE_RE.match(name) is not None, f"install.vm.variables.{name}",
              "variable names are identifiers (letters, digits, _)")
    check(vm.media_trust in ("pinned", "first-use", "signed"), "install.vm.media_trust",
          "must be 'pinned', 'first-use' or 'signed'")
    check(vm.memory_mib >= 512, "install.vm.memory_mib", "must be at least 512")
    check(1 <= vm.vcpus <= 64, "install.vm.vcpus", "must be between 1 and 64")
    check(vm.inactivity_seconds >= 30, "install.vm.inactivity_seconds", "must be at least 30")
    check(vm.timeout_seconds > vm.inactivity_seconds, "install.vm.timeout_seconds",
          "must be longer than install.vm.inactivity_seconds")
    check(VARIABLE_RE.match(vm.root_password_env) is not None, "install.vm.root_password_env",
          "must be the name of an environment variable")

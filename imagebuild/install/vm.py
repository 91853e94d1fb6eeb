"""The unattended installer in a guest: anaconda with a kickstart, debian-installer with a preseed.

The installer's own kernel and initrd (pinned, cached, re-verified) boot directly in a transient
libvirt domain; the rendered answer file is appended to the initrd as a cpio archive and named on the
kernel command line (``inst.ks=file:/ks.cfg`` / ``preseed/file=/preseed.cfg``); the target is an empty
qcow2 on virtio with discard on. The watchdog (``watchdog.py``) streams the serial console and the
installer's virtio-serial log into the build log and stops the install on a fatal line, on inactivity
or on the absolute timeout. Success needs positive proof twice: the completion marker on the console
before the guest powered off by itself, and the marker file on the disk (checked and removed in the
libguestfs session, ``finalize``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..accel import Accel
from ..answerfile import COMPLETION_MARKER, answer_file_kind, prepare_answer_file, validate_recipe
from ..domain import DiskSpec, DomainSpec, cdrom, domain_xml, random_mac
from ..errors import InstallFailed, RecipeError
from ..events import Reporter
from ..guest import Guest
from ..recipe import Backend, Family, Recipe
from ..run import run
from ..workspace import Build
from .initrd import inject
from .media import DEBIAN_KEYRING, dists_split, fetch_boot_files
from .vm_plan import ANACONDA_LOG_PORT, describe_vm_install, kernel_arguments
from .watchdog import Limits, run_installer

# Written by the answer file's last %post / late_command; proves the install ran to its end.
COMPLETION_FILE = "/imagebuild-install-complete"


def install_limits(recipe: Recipe, accel: Accel) -> Limits:
    vm = recipe.install.vm
    # Recipe timeouts are for KVM; emulation is several times slower.
    factor = recipe.boot_test.tcg_factor if accel is Accel.TCG else 1
    return Limits(inactivity_seconds=vm.inactivity_seconds * factor, timeout_seconds=vm.timeout_seconds * factor)


class VMInstaller:
    backend: ClassVar[Backend] = Backend.VM
    installs_packages: ClassVar[bool] = False   # the answer file's own set: the packages step adds ours

    def tools(self, recipe: Recipe) -> dict[str, str]:
        vm = recipe.install.vm
        tools = {"qemu-img": "create the target disk", "openssl": "hash the root password (passwd -6)"}
        if dists_split(vm.tree_url) is not None:
            tools["gpgv"] = "verify the Debian archive's signed InRelease"
        if vm.iso_url:
            tools["xorriso"] = "read the installer's kernel and initrd out of the ISO"
        if vm.iso_checksums_url:
            tools["gpgv"] = "verify the ISO's signed checksum list"
        return tools

    def validate(self, recipe: Recipe, reporter: Reporter, *, for_build: bool) -> None:
        validate_recipe(recipe, reporter, for_build=for_build)
        vm = recipe.install.vm
        if vm.iso_checksums_url or dists_split(vm.tree_url) is not None:
            keyring = Path(vm.keyring or DEBIAN_KEYRING).expanduser()
            if not keyring.is_file():
                msg = (f"the keyring {keyring} that verifies the media's signed checksums does not exist "
                       "(see the recipe's comment, or docs/answer-files.md, for where its key comes from)")
                # Pinned media from a Debian tree still build without it, on the pins alone.
                if for_build and (vm.iso_checksums_url or vm.media_trust == "signed"):
                    raise RecipeError(msg, file=recipe.sources[0] if recipe.sources else None,
                                      key="install.vm.keyring")
                reporter.info(f"warning: {msg}")

    def describe(self, recipe: Recipe) -> dict[str, Any]:
        plan = describe_vm_install(recipe)
        plan["media_trust"] = recipe.install.vm.media_trust
        # Placeholders in capitals: WORK is work/BUILD_ID, OUTPUT the output dir, MEDIA the media cache.
        spec = self._domain_spec(recipe, name=f"imagebuild-{recipe.name}-BUILD_ID-install", accel=Accel.KVM,
                                 disk=Path("WORK/disk.qcow2"), console=Path("OUTPUT/.tmp-BUILD_ID/install-console.log"),
                                 kernel=Path("MEDIA/vmlinuz"), initrd=Path("WORK/initrd.img (installer initrd + ks)"),
                                 log_socket=Path("/tmp/imagebuild-BUILD_ID/installer-log.sock"),
                                 mac="52:54:00:xx:xx:xx",
                                 iso=Path("MEDIA/sha256/ISO_SHA256/" + recipe.install.vm.iso_url.rsplit("/", 1)[-1])
                                 if recipe.install.vm.iso_url else None)
        plan["domain_xml"] = domain_xml(spec) + "<!-- type='qemu' (TCG) when the KVM probe fails -->\n"
        return plan

    def _domain_spec(self, recipe: Recipe, *, name: str, accel: Accel, disk: Path, console: Path, kernel: Path,
                     initrd: Path, log_socket: Path | None, mac: str, iso: Path | None = None) -> DomainSpec:
        vm = recipe.install.vm
        kickstart = answer_file_kind(recipe).value == "kickstart"
        disks = (DiskSpec(disk, "qcow2"),) + ((cdrom(iso, recipe.image.machine_type),) if iso else ())
        return DomainSpec(
            name=name, accel=accel, memory_mib=vm.memory_mib, vcpus=vm.vcpus, disks=disks,
            console_log=console, mac=mac, machine=recipe.image.machine_type, kernel=kernel, initrd=initrd,
            cmdline=" ".join(kernel_arguments(recipe)), guest_agent=False,
            extra_channels=((ANACONDA_LOG_PORT, log_socket),) if kickstart and log_socket else ())

    def disk_ahead(self, build: Build) -> Path | None:
        return None  # the installer VM writes the whole disk: the appliance can only start after it

    def install(self, build: Build) -> None:
        r, rep = build.recipe, build.reporter
        assert build.accel is not None
        with rep.step("fetch install media"):
            media = fetch_boot_files(r, reporter=rep, scratch=build.work)
        with rep.step("render answer file"):
            answer = prepare_answer_file(r, rep)
        initrd = inject(media.initrd, {answer.name: (answer.text.encode(), 0o600)}, build.work / "initrd.img")
        disk = build.work / "disk.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", str(disk), f"{r.image.disk_gib}G"],
            reporter=rep, purpose="the empty target disk")
        log_socket = build.socket_dir() / "installer-log.sock" if answer_file_kind(r).value == "kickstart" else None
        spec = self._domain_spec(r, name=f"{build.domain_prefix}-install", accel=build.accel.accel, disk=disk,
                                 console=build.staging / "install-console.log", kernel=media.kernel,
                                 initrd=initrd, log_socket=log_socket, mac=random_mac(), iso=media.iso)
        limits = install_limits(r, build.accel.accel)
        rep.info(f"installer: {media.kernel_url} ({build.accel.accel}; inactivity {limits.inactivity_seconds}s, "
                 f"timeout {limits.timeout_seconds}s)")
        with rep.step("run installer"):
            outcome = run_installer(spec, limits=limits, marker=COMPLETION_MARKER, reporter=rep,
                                    log_socket=log_socket, keep_dir=build.staging)
        rep.info(f"the installer finished and powered off after {outcome.seconds:.0f}s")
        initrd.unlink()
        build.disk, build.disk_format = disk, "qcow2"
        build.inputs.update({
            "tree_url": r.install.vm.tree_url, "iso_url": r.install.vm.iso_url, "iso_sha256": media.iso_sha256,
            "kernel": media.kernel_url, "initrd": media.initrd_url,
            "kernel_sha256": media.kernel_sha256, "initrd_sha256": media.initrd_sha256,
            "media_trust": r.install.vm.media_trust, "media_signed_by": media.signed_by,
            "answer_file": answer.name,
            "answer_template": answer.template, "install_seconds": round(outcome.seconds, 1)})

    def finalize(self, guest: Guest, build: Build) -> None:
        if not guest.is_file(COMPLETION_FILE):
            raise InstallFailed(f"the installer powered off but its last step never ran: {COMPLETION_FILE} is "
                                "missing from the disk")
        guest.remove(COMPLETION_FILE)

    def seal(self, build: Build) -> None:
        """A VM install's disk stays as its installer and the appliance left it: anaconda and d-i write
        random identifiers and the times of the install (only bootstrap builds are reproducible)."""

    def boot_config(self, guest: Guest, build: Build) -> None:
        # The installer wrote the boot loader's configuration. On Debian the hotplug step adds kernel
        # arguments through /etc/default/grub.d, which only update-grub turns into grub.cfg; the EL
        # steps change no kernel argument, so anaconda's grub.cfg stands.
        if build.recipe.image.family is Family.DEBIAN:
            guest.command(["update-grub"], purpose="regenerate grub.cfg with the steps' kernel arguments")


__all__ = ["VMInstaller", "COMPLETION_FILE", "install_limits"]

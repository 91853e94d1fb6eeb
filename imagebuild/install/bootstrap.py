"""The VM-less installer: mmdebstrap builds the root tree on the host, host tools assemble the disk.

Host-side tools are far faster than the libguestfs appliance under emulation (``tar_in`` of a 780 MB
tree costs ~140 s there; ``mkfs.ext4 -d`` writes the same tree straight into the partition in ~10 s).
Only the bootloader needs the image's own grub run against the whole disk, which the shared libguestfs
session does in ``finalize``.

Disk: the firmware's layout (``disklayout``: MBR with one ext4 /; or GPT with an ESP, and for hybrid
images a BIOS boot partition too), no swap, fstab by UUID, serial console. The ESP is made on the host
with ``mkfs.fat --offset`` (userspace: these hosts have no vfat driver; it takes milliseconds) and filled
by the image's own ``grub-install`` in the libguestfs session, whose kernel mounts vfat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..attest.dpkg import installed_packages
from ..codeversion import code_version
from ..disklayout import BOOT_PACKAGES, ESP_LABEL, ESP_MOUNT, SECTOR, DiskLayout, layout_for
from ..errors import InstallFailed
from ..events import Reporter
from ..guest import Guest
from ..paths import cache_root
from ..preflight import preflight
from ..recipe import Backend, Firmware, Recipe, to_data
from ..reproducible import (
    build_seed,
    derived_uuid,
    source_date_epoch,
    vfat_id,
)
from ..run import run
from ..workspace import Build, remove_tree, remove_tree_beside
from . import grubcache, hostgrub, initramfs, initramfs_beside
from .reseal import read_partitions, reseal

# grub-efi-amd64's own settings for later upgrades: no NVRAM writes (a cloud guest's NVRAM is not
# ours), and keep EFI/BOOT/BOOTX64.EFI current, the path a fresh NVRAM boots.
UEFI_DEBCONF = ("grub-efi-amd64 grub2/update_nvram boolean false\n"
                "grub-efi-amd64 grub2/force_efi_extra_removable boolean true\n")
SERIAL_CMDLINE = "console=tty0 console=ttyS0,115200n8"
# What mmdebstrap's --aptopt and --dpkgopt leave in the tree, for good (its manual: "permanently added"):
# Acquire::Retries for the build's downloads, and force-unsafe-io, dpkg without fsync, which on a running
# system risks empty files after a power cut in the middle of an upgrade. They served the build only:
# ``_configure`` removes them, and the customize step installer-files checks that they are gone.
BUILD_ONLY_CONFIG = ("/etc/apt/apt.conf.d/99mmdebstrap", "/etc/dpkg/dpkg.cfg.d/99mmdebstrap")

GRUB_DEFAULTS = f"""\
# Written by imagebuild: serial console for headless clouds and the boot test, short menu.
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="{SERIAL_CMDLINE}"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
GRUB_DISABLE_OS_PROBER=true
"""
# Any Ethernet NIC gets DHCP, whatever its name or MAC: nothing here names the build's hardware.
NETWORKD_DHCP = """\
[Match]
Type=ether

[Network]
DHCP=yes
"""


def sources_list(recipe: Recipe) -> list[str]:
    b = recipe.install.bootstrap
    comps = " ".join(b.components)
    lines = [f"deb {b.mirror} {b.suite} {comps}", f"deb {b.mirror} {b.suite}-updates {comps}"]
    if b.security_mirror:
        lines.append(f"deb {b.security_mirror} {b.suite}-security {comps}")
    return lines


def apt_cache_dir(recipe: Recipe) -> Path:
    """The host's package cache for this recipe's suite (a plain directory of .deb files)."""
    return cache_root() / "apt" / f"debian-{recipe.install.bootstrap.suite}-amd64"


def initramfs_staging(target: Path) -> Path:
    """Where the install stages the initramfs policy's files for mmdebstrap's hook: beside the tree."""
    return target.parent / "initramfs-policy"


def mmdebstrap_argv(recipe: Recipe, target: Path, apt_cache: Path | None = None) -> list[str]:
    b = recipe.install.bootstrap
    packages = list(dict.fromkeys(b.include + BOOT_PACKAGES[recipe.image.firmware] + recipe.all_packages))
    policy, staging = b.initramfs_modules, initramfs_staging(target)
    cache: list[str] = []
    if apt_cache is not None:
        # mmdebstrap's own package-cache recipe (its manual, EXAMPLES): the cached .debs go into the
        # tree's apt cache before apt runs, and every .deb apt used comes back out before cleanup.
        # apt re-checks each cached file against the hashes in the signed index, so a stale or
        # damaged file is fetched again, never installed.
        cache = ["--skip=essential/unlink",
                 '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
                 f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/",
                 f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}"]
    # A private mount namespace: whatever mmdebstrap mounts inside the tree disappears with it, even
    # if the build is killed with SIGKILL, so a stale tree can never pin /proc or /dev.
    return ["unshare", "--mount", "--propagation", "private",
            "mmdebstrap", "--mode=root", f"--variant={b.variant}",
            f"--components={','.join(b.components)}", f"--include={','.join(packages)}",
            "--aptopt=Acquire::Retries \"3\"", "--dpkgopt=force-unsafe-io",
            # the initramfs made once, beside the packages that do not feed it (initramfs_beside.py)
            initramfs_beside.HOLD, initramfs_beside.start_hook(packages, policy, staging, target),
            initramfs_beside.wait_hook(policy, staging, target), *cache,
            b.suite, str(target), *sources_list(recipe)]


def installed_debs(dpkg_status: str) -> set[str]:
    """The archive file names (as apt names them in /var/cache/apt/archives) of the installed packages."""
    return {p.deb_file for p in installed_packages(dpkg_status)}


def tend_apt_cache(cache: Path, rootfs: Path, cached_before: set[str], reporter: Reporter) -> dict[str, Any]:
    """Keep in the cache exactly the .debs of this tree (so it never grows past one system), and say
    how many of them the cache supplied."""
    wanted = installed_debs((rootfs / "var/lib/dpkg/status").read_text())
    for stale in sorted({p.name for p in cache.glob("*.deb")} - wanted):
        (cache / stale).unlink(missing_ok=True)
    hits = len(cached_before & wanted)
    size = sum(p.stat().st_size for p in cache.glob("*.deb"))
    reporter.info(f"package cache: {hits} of {len(wanted)} packages came from {cache} "
                  f"({size / 2**20:.0f} MiB kept)")
    return {"dir": str(cache), "packages": len(wanted), "from_cache": hits, "size": size}


@dataclass
class _Disk:
    """The disk ``disk_ahead`` made: where, the filesystem ids it chose, and partition → (start, size)."""
    path: Path
    root_uuid: str
    esp_id: str                          # the ESP's vfat volume id ("" without an ESP)
    seed: str = ""                       # what every identifier is derived from (reproducible.build_seed)
    parts: dict[int, tuple[int, int]] = field(default_factory=dict)


class BootstrapInstaller:
    backend: ClassVar[Backend] = Backend.BOOTSTRAP
    installs_packages: ClassVar[bool] = True    # mmdebstrap --include: the whole set, before customize

    def tools(self, recipe: Recipe) -> dict[str, str]:
        tools = {"mmdebstrap": "build the Debian root tree", "unshare": "isolate mmdebstrap's mounts",
                 "sfdisk": "write the partition table", "mkfs.ext4": "write the root tree into the disk",
                 "systemctl": "enable units in the tree offline (systemctl --root)"}
        tools.update(hostgrub.tools(layout_for(recipe.image.firmware)))
        if layout_for(recipe.image.firmware).esp is not None:
            tools["mkfs.fat"] = "make the EFI system partition (Debian package dosfstools)"
        return tools

    def validate(self, recipe: Recipe, reporter: Reporter, *, for_build: bool) -> None:
        if for_build:  # recipe.validate checked the names; the archive must have them, before mmdebstrap runs
            preflight(recipe, reporter)

    def describe(self, recipe: Recipe) -> dict[str, Any]:
        command = mmdebstrap_argv(recipe, Path("<work>/rootfs"), apt_cache_dir(recipe))
        fw = recipe.image.firmware
        targets = {Firmware.BIOS: "i386-pc", Firmware.UEFI: "x86_64-efi (shim, removable path too)",
                   Firmware.HYBRID: "i386-pc + x86_64-efi (shim, removable path too)"}[fw]
        return {"backend": "bootstrap", "command": command,
                "disk": {**layout_for(fw).describe(), "size_gib": recipe.image.disk_gib},
                "kernel_cmdline": SERIAL_CMDLINE,
                "initramfs_modules": recipe.install.bootstrap.initramfs_modules,
                "bootloader": f"{' '.join(BOOT_PACKAGES[fw])}: grub-install {targets}, run from the image"}

    def disk_ahead(self, build: Build) -> Path:
        """The disk file before the tree exists: full size (sparse), its partition table written and the
        ESP made, so the libguestfs appliance can boot on it while mmdebstrap runs. Only the root
        filesystem is left for ``install`` to write."""
        if build.notes.get("disk") is not None:
            return build.notes["disk"].path
        r, rep = build.recipe, build.reporter
        layout = layout_for(r.image.firmware)
        # every identifier derived from the recipe (reproducible.py): the same recipe, the same bytes
        seed = build_seed(to_data(r))
        build.inputs["seed"] = seed
        disk = _Disk(build.work / "disk.raw", derived_uuid(seed, "root-fs"),
                     vfat_id(seed) if layout.esp is not None else "", seed)
        with rep.step("partition disk"):
            with open(disk.path, "wb") as f:
                f.truncate(r.image.disk_gib * 1024**3)
            run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk.path)], reporter=rep,
                input=layout.sfdisk_script(disk.path.name, lambda purpose: derived_uuid(seed, purpose)),
                purpose="write the partition table")
            disk.parts = self._read_table(disk.path, build)
            if layout.esp is not None:
                esp_start, esp_size = disk.parts[layout.esp.number]
                # -s 1: one sector a cluster keeps FAT32 above its minimum cluster count on a small ESP
                run(["mkfs.fat", "-F", "32", "-s", "1", "-n", ESP_LABEL, "-i", disk.esp_id,
                     f"--offset={esp_start}", str(disk.path), str(esp_size * SECTOR // 1024)],
                    reporter=rep, purpose="make the EFI system partition (vfat)")
        build.notes["disk"] = disk
        return disk.path

    def install(self, build: Build) -> None:
        r, rep = build.recipe, build.reporter
        rootfs = build.work / "rootfs"
        build.stack.callback(remove_tree, rootfs, rep)
        self.disk_ahead(build)
        disk: _Disk = build.notes["disk"]
        cache = apt_cache_dir(r) if build.use_cache else None
        if cache is not None and any(c.isspace() for c in str(cache)):
            rep.info(f"package cache off: mmdebstrap's sync hooks cannot take a path with spaces ({cache})")
            cache = None
        cached_before: set[str] = set()
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            cached_before = {p.name for p in cache.glob("*.deb")}
        initramfs.stage(r.install.bootstrap.initramfs_modules, initramfs_staging(rootfs))
        with rep.step("mmdebstrap"):
            run(mmdebstrap_argv(r, rootfs, cache), reporter=rep, purpose="build the root tree")
        if reasons := initramfs_beside.reasons_to_remake(rootfs):
            with rep.step("initramfs again"):
                initramfs_beside.remake(rootfs, reasons, rep)
        if cache is not None:
            build.inputs["package_cache"] = tend_apt_cache(cache, rootfs, cached_before, rep)
        layout = layout_for(r.image.firmware)
        with rep.step("configure tree"):
            self._configure(rootfs, disk.root_uuid, disk.esp_id, build)
        build.inputs.update({"mirror": r.install.bootstrap.mirror, "suite": r.install.bootstrap.suite,
                             "sources": sources_list(r), "root_fs_uuid": disk.root_uuid,
                             "disk_layout": layout.describe()})
        with rep.step("write root filesystem"):
            # one time for what the packages did not date (the newest package's): the seal, after
            # customize, clamps every later time to it and dates every inode with it (``reseal``), so
            # this filesystem, written again there, needs no clamping of its own
            epoch = source_date_epoch(rootfs)
            build.inputs["source_date_epoch"] = epoch
            start, size = disk.parts[layout.root.number]
            run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), "-U", disk.root_uuid, "-L", "root",
                 "-E", f"offset={start * SECTOR},root_owner=0:0,hash_seed={derived_uuid(disk.seed, 'ext4-hash-seed')}",
                 str(disk.path), f"{size * SECTOR // 1024}k"],
                env={"E2FSPROGS_FAKE_TIME": str(epoch)}, reporter=rep,
                purpose="write the root tree into the partition")
            self._check_disk(disk.path, disk.root_uuid, disk.esp_id, disk.parts, build)
        remove_tree_beside(rootfs, build)  # nothing reads it once mkfs.ext4 wrote it into the disk
        build.disk, build.disk_format = disk.path, "raw"

    def seal(self, build: Build) -> None:
        """Each filesystem written again from its finished tree (``reseal``), into a fresh raw disk that
        becomes the build's disk: the identifiers derived from the recipe, every time the epoch's."""
        assert build.disk is not None
        seed, epoch = build.inputs.get("seed"), build.inputs.get("source_date_epoch")
        if not seed or epoch is None:
            build.reporter.info("not sealed: this install recorded no seed or SOURCE_DATE_EPOCH (a cached "
                                "install made before reproducible builds); rebuild it with --rebuild install")
            return
        layout = layout_for(build.recipe.image.firmware)
        with build.reporter.step("seal"):
            build.disk = reseal(build.disk, build.disk_format, layout, root_uuid=derived_uuid(seed, "root-fs"),
                                hash_seed=derived_uuid(seed, "ext4-hash-seed"),
                                esp_id=vfat_id(seed) if layout.esp is not None else "", epoch=int(epoch),
                                work=build.work, reporter=build.reporter)
            build.disk_format, build.disk_from_cache = "raw", False

    def _read_table(self, disk: Path, build: Build) -> dict[int, tuple[int, int]]:
        """partition number → (start, size) in sectors, as sfdisk wrote them."""
        return read_partitions(disk, build.reporter)

    def _check_disk(self, disk: Path, root_uuid: str, esp_id: str, parts: dict[int, tuple[int, int]],
                    build: Build) -> None:
        """The partition table and the filesystems must be where the boot loaders will look for them."""
        layout = layout_for(build.recipe.image.firmware)
        rep = build.reporter
        want = {p.number: p.start_sector for p in layout.partitions}
        got = {n: start for n, (start, _) in parts.items()}
        if got != want:
            raise InstallFailed(f"the assembled disk's partitions (number: start sector) are {got}, "
                                f"expected {want}")
        whole = run(["blkid", "-p", "-o", "export", str(disk)], reporter=rep, check=False,
                    purpose="verify the disk start reads as the partition table").stdout
        if f"PTTYPE={'dos' if layout.label == 'dos' else 'gpt'}" not in whole:
            raise InstallFailed(f"the disk start does not read as a {layout.label} partition table:\n{whole}")
        expect = {layout.root.number: f"UUID={root_uuid}"}
        if layout.esp is not None:
            expect[layout.esp.number] = f"UUID={esp_id[:4]}-{esp_id[4:]}"
        for number, marker in expect.items():
            probe = run(["blkid", "-p", "-o", "export", "-O", str(parts[number][0] * SECTOR), str(disk)],
                        reporter=rep, check=False, purpose=f"verify the filesystem of partition {number}").stdout
            if marker not in probe:
                raise InstallFailed(f"partition {number} of the assembled disk does not hold the filesystem "
                                    f"{marker}:\n{probe}")

    def _configure(self, root: Path, root_uuid: str, esp_id: str, build: Build) -> None:
        def write(rel: str, text: str, mode: int = 0o644) -> None:
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.is_symlink():
                p.unlink()
            p.write_text(text)
            p.chmod(mode)

        kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise InstallFailed("the bootstrapped tree has no kernel in /boot (include linux-image-*)")
        diversions = root / "var/lib/dpkg/diversions"
        if (root / "usr/sbin/update-initramfs.imagebuild").exists() or (
                diversions.exists() and "update-initramfs.imagebuild" in diversions.read_text()):
            raise InstallFailed("update-initramfs is still diverted in the tree "
                                "(the install's hook did not restore it)")
        policy = build.recipe.install.bootstrap.initramfs_modules
        absent = [p for p in initramfs.files(policy) if not (root / p.lstrip("/")).is_file()]
        if absent and (root / "usr/sbin/update-initramfs").exists():
            raise InstallFailed(f"the tree lacks {', '.join(absent)} (install.bootstrap.initramfs_modules = "
                                f"'{policy}'): the install's hook did not put the initramfs policy in")
        no_initrd = [k for k in kernels if not (root / f"boot/initrd.img-{k}").exists()]
        if no_initrd and (root / "usr/sbin/update-initramfs").exists():
            raise InstallFailed(f"the tree has no initramfs for kernel {', '.join(no_initrd)}")
        for path in BUILD_ONLY_CONFIG:
            (root / path.lstrip("/")).unlink(missing_ok=True)
        fstab = f"# <fs> <mount> <type> <options> <dump> <pass>\nUUID={root_uuid} / ext4 errors=remount-ro 0 1\n"
        if esp_id:
            # umask=0077: the ESP holds boot code; nofail keeps a guest booting if a cloud drops it
            fstab += f"UUID={esp_id[:4]}-{esp_id[4:]} {ESP_MOUNT} vfat umask=0077,nofail 0 2\n"
            (root / ESP_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
        write("etc/fstab", fstab)
        write("etc/default/grub.d/50-imagebuild.cfg", GRUB_DEFAULTS)
        write("etc/systemd/network/80-dhcp.network", NETWORKD_DHCP)
        write("etc/apt/sources.list", "\n".join(sources_list(build.recipe)) + "\n")
        write("etc/hosts", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
                           "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")
        run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"],
            reporter=build.reporter, purpose="enable DHCP on any NIC at boot")

    def finalize(self, guest: Guest, build: Build) -> None:
        """Check the appliance sees the disk the install wrote: the root filesystem (by UUID) on the
        layout's partition, the ESP where the layout has one. The boot loader goes in with its
        configuration, after the steps (``boot_config``)."""
        layout = layout_for(build.recipe.image.firmware)
        api_disk = guest.devices()[0]
        if guest.root_device != f"{api_disk}{layout.root.number}":
            raise InstallFailed(f"the root filesystem is on {guest.root_device}, "
                                f"expected {api_disk}{layout.root.number}")
        want_uuid = build.inputs.get("root_fs_uuid")
        seen_uuid = guest.g.vfs_uuid(guest.root_device)
        if want_uuid and seen_uuid != want_uuid:
            raise InstallFailed(f"the appliance reads the root filesystem's UUID as {seen_uuid!r}; the install "
                                f"wrote {want_uuid}: its view of the disk is stale")
        if layout.esp is not None and guest.esp_device != f"{api_disk}{layout.esp.number}":
            raise InstallFailed(f"the EFI system partition is {guest.esp_device or 'not mounted'}, "
                                f"expected {api_disk}{layout.esp.number} at {ESP_MOUNT}")

    def boot_config(self, guest: Guest, build: Build) -> None:
        """grub from the image itself, so the boot code matches the grub.cfg and modules it reads: for
        i386-pc into the disk (MBR gap or BIOS boot partition), for x86_64-efi into the ESP; and
        grub.cfg, once, after the steps (the hotplug step adds kernel arguments through
        /etc/default/grub.d). When the stage cache holds their output for what they read
        (``grubcache``: a customize-only rebuild), it is put back instead of running them."""
        fw = build.recipe.image.firmware
        layout = layout_for(fw)
        sc = build.stage_cache
        base = sc.boot_loader_key_base() if sc is not None else None
        inputs = entry = None
        if base is not None:
            inputs = grubcache.key_inputs(guest, layout, install_key=base,
                                          code=code_version(grubcache.CODE))
            entry = sc.reused_boot_loader(inputs)
        if entry is not None:
            grubcache.restore(guest, layout, entry.file, entry.meta)
        else:
            self._run_grub(guest, build, layout)
            if inputs is not None:
                files, extra = grubcache.capture(guest, layout)
                sc.store_boot_loader(inputs, files, extra)
        self._boot_loader_settings(guest, layout)

    def _run_grub(self, guest: Guest, build: Build, layout: DiskLayout) -> None:
        """On a raw disk (a fresh install), on the host (``hostgrub``: ~1 s natively, 14-26 s in the
        appliance under emulation): the appliance lets go of the disk, the host runs the image's grub
        in a chroot of it, and the appliance mounts it again for the checks that follow."""
        assert build.disk is not None
        if build.disk_format == "raw":
            guest.release_disk()
            hostgrub.run_grub(build.disk, layout, build.work, build.reporter)
            guest.remount()
        else:
            self._run_grub_in_appliance(guest, build, layout)

    def _run_grub_in_appliance(self, guest: Guest, build: Build, layout: DiskLayout) -> None:
        """A qcow2 disk (an overlay over a cached install) cannot go through a loop device, and only the
        appliance's QEMU may write it. grub-install and update-grub write different files and neither
        reads the other's, so they run side by side on the appliance's two vCPUs (warm: 18 s instead of
        40 s in a row under emulation; cold, in a build, 14-39 s, as the emulated disk I/O is
        serialised); the two grub-installs share files (fonts, locales) and run one after the other."""
        # Inside the appliance the kernel may call our disk /dev/sdb (its own root disk taking sda):
        # grub-install runs there, so it gets the kernel's name, never the libguestfs API name.
        disk, partno = guest.kernel_disk_of_root()
        if partno != layout.root.number:
            raise InstallFailed(f"the root filesystem is partition {partno} of {disk}, "
                                f"expected partition {layout.root.number}")
        build.reporter.log(f"grub target: {disk} (libguestfs calls it {guest.devices()[0]})")
        results = guest.side_by_side({"grub-install": hostgrub.grub_installs(layout, disk),
                                      "update-grub": [["update-grub"]]},
                                     purpose="install the boot loader and write grub.cfg (serial console, "
                                             "root by UUID, the steps' kernel arguments)")
        failed = [(name, r) for name, r in results.items() if r.rc != 0]
        if failed:
            name, r = failed[0]
            diag = guest.command(["sh", "-c", "grub-probe -v --target=drive /boot/grub 2>&1 | tail -n 20; "
                                  "ls -l /dev/sd* /dev/vd* /sys/dev/block/ 2>&1; cat /proc/self/mountinfo"],
                                 purpose="diagnose grub")
            raise InstallFailed(f"{r.argv} failed (exit {r.rc}):\n{r.output[-3000:]}\n--- what grub saw ---\n"
                                f"{diag}")

    def _boot_loader_settings(self, guest: Guest, layout: DiskLayout) -> None:
        """What keeps both boot paths current on a later grub upgrade, and the ESP's files checked."""
        fw = layout.firmware
        if layout.esp is not None:
            if fw is Firmware.HYBRID:
                guest.write("/etc/grub.d/enable_cloud", "")  # grub-cloud-amd64's trigger: re-install both
            else:
                guest.command(["sh", "-c", f"printf '{UEFI_DEBCONF}' | debconf-set-selections"],
                              purpose="grub-efi-amd64 upgrades: no NVRAM writes, keep the removable path")
            missing = [p for p in ("/EFI/BOOT/BOOTX64.EFI", "/EFI/BOOT/grubx64.efi", "/EFI/debian/shimx64.efi",
                                   "/EFI/debian/grubx64.efi", "/EFI/debian/grub.cfg")
                       if not guest.is_file(ESP_MOUNT + p)]
            if missing:
                raise InstallFailed(f"grub-install left the ESP without {', '.join(missing)}")

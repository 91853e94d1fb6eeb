"""The VM-less installer: mmdebstrap builds the root tree on the host, host tools assemble the disk.

Host-side tools are far faster than the libguestfs appliance under emulation (``tar_in`` of a 780 MB
tree costs ~140 s there; ``mkfs.ext4 -d`` writes the same tree straight into the partition in ~10 s).
Only the bootloader needs the image's own grub run against the whole disk, which the shared libguestfs
session does in ``finalize``.

Disk: MBR, one primary partition at 1 MiB, ext4 at /, no swap, fstab by UUID, serial console.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CustomizeFailed, InstallFailed
from ..events import Reporter
from ..guest import Guest
from ..paths import cache_root
from ..preflight import preflight
from ..recipe import Backend, Recipe
from ..run import run
from ..workspace import Build, remove_tree

PART_START = 1024 * 1024  # 1 MiB: aligned, and room for grub's core.img after the MBR
SERIAL_CMDLINE = "console=tty0 console=ttyS0,115200n8"

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


def mmdebstrap_argv(recipe: Recipe, target: Path, apt_cache: Path | None = None) -> list[str]:
    b = recipe.install.bootstrap
    packages = list(dict.fromkeys(b.include + recipe.packages.all))
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
            "--aptopt=Acquire::Retries \"3\"", "--dpkgopt=force-unsafe-io", *cache,
            b.suite, str(target), *sources_list(recipe)]


def installed_debs(dpkg_status: str) -> set[str]:
    """The archive file names (as apt names them in /var/cache/apt/archives) of the installed packages."""
    names = set()
    for stanza in dpkg_status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if "install ok installed" in fields.get("Status", "") and "Package" in fields:
            version = fields.get("Version", "").replace(":", "%3a")
            names.add(f"{fields['Package']}_{version}_{fields.get('Architecture', 'all')}.deb")
    return names


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


class BootstrapInstaller:
    backend: ClassVar[Backend] = Backend.BOOTSTRAP

    def tools(self, recipe: Recipe) -> dict[str, str]:
        return {"mmdebstrap": "build the Debian root tree", "unshare": "isolate mmdebstrap's mounts",
                "sfdisk": "write the MBR partition table", "mkfs.ext4": "write the root tree into the disk",
                "systemctl": "enable units in the tree offline (systemctl --root)"}

    def validate(self, recipe: Recipe, reporter: Reporter, *, for_build: bool) -> None:
        if for_build:  # recipe.validate checked the names; the archive must have them, before mmdebstrap runs
            preflight(recipe, reporter)

    def describe(self, recipe: Recipe) -> dict[str, Any]:
        command = mmdebstrap_argv(recipe, Path("<work>/rootfs"), apt_cache_dir(recipe))
        return {"backend": "bootstrap", "command": command,
                "disk": {"label": "dos", "partitions": [{"start": "1MiB", "fs": "ext4", "mount": "/"}],
                         "size_gib": recipe.image.disk_gib},
                "kernel_cmdline": SERIAL_CMDLINE, "bootloader": "grub-pc (BIOS), installed from the image"}

    def install(self, build: Build) -> None:
        r, rep = build.recipe, build.reporter
        rootfs = build.work / "rootfs"
        build.stack.callback(remove_tree, rootfs, rep)
        cache = apt_cache_dir(r) if build.use_cache else None
        if cache is not None and any(c.isspace() for c in str(cache)):
            rep.info(f"package cache off: mmdebstrap's sync hooks cannot take a path with spaces ({cache})")
            cache = None
        cached_before: set[str] = set()
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            cached_before = {p.name for p in cache.glob("*.deb")}
        with rep.step("mmdebstrap"):
            run(mmdebstrap_argv(r, rootfs, cache), reporter=rep, purpose="build the root tree")
        if cache is not None:
            build.inputs["package_cache"] = tend_apt_cache(cache, rootfs, cached_before, rep)
        root_uuid = str(uuid.uuid4())
        with rep.step("configure tree"):
            self._configure(rootfs, root_uuid, build)
        build.inputs.update({"mirror": r.install.bootstrap.mirror, "suite": r.install.bootstrap.suite,
                             "sources": sources_list(r), "root_fs_uuid": root_uuid})
        disk = build.work / "disk.raw"
        with rep.step("assemble disk"):
            size = r.image.disk_gib * 1024**3
            with open(disk, "wb") as f:
                f.truncate(size)
            run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], reporter=rep,
                input="label: dos\nstart=2048, type=83, bootable\n", purpose="write the partition table")
            fs_kib = (size - PART_START) // 1024
            run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), "-U", root_uuid, "-L", "root",
                 "-E", f"offset={PART_START},root_owner=0:0", str(disk), f"{fs_kib}k"],
                reporter=rep, purpose="write the root tree into the partition")
            self._check_disk(disk, root_uuid, build)
        remove_tree(rootfs, rep)
        build.disk, build.disk_format = disk, "raw"

    def _check_disk(self, disk: Path, root_uuid: str, build: Build) -> None:
        """The partition table and the filesystem must be where the bootloader will look for them."""
        table = run(["sfdisk", "--dump", str(disk)], reporter=build.reporter, check=False,
                    purpose="verify the partition table").stdout
        probe = run(["blkid", "-p", "-o", "export", "-O", str(PART_START), str(disk)], reporter=build.reporter,
                    check=False, purpose="verify the root filesystem").stdout
        whole = run(["blkid", "-p", "-o", "export", str(disk)], reporter=build.reporter, check=False,
                    purpose="verify nothing but the partition table is at the disk start").stdout
        if "label: dos" not in table or "start=        2048" not in table:
            raise InstallFailed(f"the assembled disk has no MBR partition at 1 MiB:\n{table}")
        if f"UUID={root_uuid}" not in probe:
            raise InstallFailed(f"no ext4 filesystem {root_uuid} at 1 MiB in the assembled disk:\n{probe}")
        if "PTTYPE=dos" not in whole:
            raise InstallFailed(f"the disk start does not read as an MBR disk:\n{whole}")

    def _configure(self, root: Path, root_uuid: str, build: Build) -> None:
        def write(rel: str, text: str, mode: int = 0o644) -> None:
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.is_symlink():
                p.unlink()
            p.write_text(text)
            p.chmod(mode)

        if not any((root / "boot").glob("vmlinuz-*")):
            raise InstallFailed("the bootstrapped tree has no kernel in /boot (include linux-image-*)")
        write("etc/fstab", f"# <fs> <mount> <type> <options> <dump> <pass>\n"
                           f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
        write("etc/default/grub.d/50-imagebuild.cfg", GRUB_DEFAULTS)
        write("etc/systemd/network/80-dhcp.network", NETWORKD_DHCP)
        write("etc/apt/sources.list", "\n".join(sources_list(build.recipe)) + "\n")
        write("etc/hosts", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
                           "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")
        run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"],
            reporter=build.reporter, purpose="enable DHCP on any NIC at boot")

    def finalize(self, guest: Guest, build: Build) -> None:
        # grub from the image itself, so the boot code matches the grub.cfg and modules it reads.
        api_disk = guest.g.list_devices()[0]
        if guest.root_device != api_disk + "1":
            raise InstallFailed(f"the root filesystem is on {guest.root_device}, expected {api_disk}1")
        # Inside the appliance the kernel may call our disk /dev/sdb (its own root disk taking sda):
        # grub-install runs there, so it gets the kernel's name, never the libguestfs API name.
        disk, partno = guest.kernel_disk_of_root()
        if partno != 1:
            raise InstallFailed(f"the root filesystem is partition {partno} of {disk}, expected partition 1")
        build.reporter.log(f"grub target: {disk} (libguestfs calls it {api_disk})")
        try:
            guest.command(["grub-install", "--target=i386-pc", disk], purpose="install the boot loader")
        except CustomizeFailed as exc:
            diag = guest.command(["sh", "-c", "grub-probe -v --target=drive /boot/grub 2>&1 | tail -n 20; "
                                  "ls -l /dev/sd* /dev/vd* /sys/dev/block/ 2>&1; cat /proc/self/mountinfo"],
                                 purpose="diagnose grub-install")
            raise InstallFailed(f"grub-install {disk} failed: {exc}\n--- what grub saw ---\n{diag}") from None
        guest.command(["update-grub"], purpose="write grub.cfg (serial console, root by UUID)")

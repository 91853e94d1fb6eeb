"""The initramfs made beside the packages that do not feed it (install/initramfs_beside.py).

The hooks are run by a real sh with real flock, on a tree whose chroot, apt-get and update-initramfs
are stand-ins (named so: this tier runs no package manager); the check runs on trees laid out as dpkg
leaves them. A full build (tests/fullbuild) makes the real one and boots it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagebuild.events import Reporter
from imagebuild.install import initramfs
from imagebuild.install.bootstrap import initramfs_staging, mmdebstrap_argv
from imagebuild.install.initramfs_beside import (
    CALLS,
    HOLD,
    feed_pattern,
    reasons_to_remake,
    remake,
    start_hook,
    wait_hook,
    work_dir,
)
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.unit

KERNEL = "6.1.0-57-amd64"
STANZA = "Package: {}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-1\n"
# stand-ins on PATH: chroot runs the tree's own program (a bare name from its /usr/sbin) or moves the
# diversion's file as dpkg-divert --rename would; apt-get records its arguments
CHROOT = """#!/bin/sh
root=$1; shift
case "$1 $*" in
dpkg-divert*--add*) mv "$root/usr/sbin/update-initramfs" "$root/usr/sbin/update-initramfs.imagebuild" 2>/dev/null
  true ;;
dpkg-divert*--remove*) mv "$root/usr/sbin/update-initramfs.imagebuild" "$root/usr/sbin/update-initramfs" ;;
/*) cmd=$1; shift; FAKE_ROOT=$root exec "$root$cmd" "$@" ;;
*) cmd=$1; shift; FAKE_ROOT=$root exec "$root/usr/sbin/$cmd" "$@" ;;
esac
"""
APT_GET = """#!/bin/sh
case " $* " in
*" -s "*) printf 'Inst %s (1 Debian:12/stable [amd64])\\n' $FAKE_WILL_INSTALL ;;
*) echo "$@" > "$FAKE_LOG/apt-get.args" ;;
esac
"""
# the tree's update-initramfs (under its diverted name): slow enough to be seen running in the background
UPDATE_INITRAMFS = """#!/bin/sh
sleep 1
echo "made $* at $SOURCE_DATE_EPOCH by $ZSTD_NBTHREADS" > "$FAKE_ROOT/boot/initrd.img-6.1.0-57-amd64"
echo "update-initramfs: Generating /boot/initrd.img-6.1.0-57-amd64"
exit ${FAKE_RC:-0}
"""


def fake_tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "rootfs"
    for d in ("boot", "usr/sbin", "var/lib/dpkg"):
        (root / d).mkdir(parents=True)
    (root / f"boot/vmlinuz-{KERNEL}").write_bytes(b"k")
    os.utime(root / f"boot/vmlinuz-{KERNEL}", (1700000000, 1700000000))
    (root / "var/lib/dpkg/status").write_text(STANZA.format("udev"))
    real = root / "usr/sbin/update-initramfs.imagebuild"   # as dpkg leaves it under the diversion
    real.write_text(UPDATE_INITRAMFS)
    real.chmod(0o755)
    (root / "usr/sbin/update-initramfs").write_text("#!/bin/sh\nexit 0\n")   # the no-op HOLD wrote
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in (("chroot", CHROOT), ("apt-get", APT_GET)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path),
           "FAKE_WILL_INSTALL": "linux-image-6.1.0-57-amd64 linux-image-amd64 vim-runtime vim dmsetup udev",
           "MMDEBSTRAP_APT_CONFIG": str(tmp_path / "apt.conf")}
    return root, env


def hook(arg: str, root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a hook the way mmdebstrap runs a shell hook: ``sh -c HOOK exec ROOT``."""
    text = arg.split("=", 1)[1]
    return subprocess.run(["sh", "-c", text, "exec", str(root)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_the_packages_that_feed_the_initramfs_go_in_first():
    feeds = re.compile(feed_pattern())
    will_install = ["linux-image-6.1.0-57-amd64", "linux-image-amd64", "systemd", "systemd-sysv", "udev", "kmod",
                    "e2fsprogs", "zstd", "dmsetup", "cloud-guest-utils", "cloud-initramfs-growroot",
                    "initramfs-tools", "firmware-misc-nonfree", "busybox"]
    assert all(feeds.fullmatch(p) for p in will_install)
    assert not any(feeds.fullmatch(p) for p in ("cloud-init", "openssh-server", "grub-cloud-amd64", "vim",
                                                "systemd-resolved", "libudev1", "linux-base", "udevil"))
    r = load_recipe("debian12")
    argv = mmdebstrap_argv(r, Path("/w/rootfs"))
    include = next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(",")
    # the hold before the start, the start before the wait, all before the suite
    hold, start = argv.index(HOLD), next(i for i, a in enumerate(argv) if "--mark-auto" in a)
    wait = next(i for i, a in enumerate(argv) if "flock" in a and a.startswith("--customize-hook="))
    assert argv[start].startswith("--essential-hook=") and hold < start < wait < argv.index("bookworm")
    assert f"install -s {' '.join(include)} |" in argv[start]   # what apt would install for all of them
    # the policy's files are in the tree before the feeding packages are configured
    staged = initramfs_staging(Path("/w/rootfs"))
    assert argv[start].index(f"cp -p {staged}{initramfs.CONF}") < argv[start].index("apt-get")


def test_the_hold_records_who_asks_for_an_initramfs(tmp_path):
    root, env = fake_tree(tmp_path)
    for name in ("update-initramfs", "update-initramfs.imagebuild"):   # before initramfs-tools is in
        (root / "usr/sbin" / name).unlink()
    held = hook(HOLD, root, env)
    assert held.returncode == 0, held.stderr
    noop = root / "usr/sbin/update-initramfs"
    assert os.access(noop, os.X_OK) and CALLS in noop.read_text()
    noop.write_text(noop.read_text().replace(CALLS, f"{root}{CALLS}"))   # run here, not in a chroot
    (root / CALLS.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(noop), "-u"], check=True)
    subprocess.run([str(noop), "-c", "-k", KERNEL], check=True)
    assert (root / CALLS.lstrip("/")).read_text() == f"-u\n-c -k {KERNEL}\n"


def test_the_initramfs_is_made_in_the_background_and_waited_for(tmp_path):
    root, env = fake_tree(tmp_path)
    target = root
    staging = initramfs_staging(target)
    initramfs.stage("disk", staging)
    t0 = time.monotonic()
    started = hook(start_hook(["linux-image-amd64", "udev", "vim"], "disk", staging, target), root, env)
    assert started.returncode == 0, started.stderr
    assert time.monotonic() - t0 < 0.9              # it did not wait for update-initramfs (1 s)
    # of what apt would install, the packages that feed the initramfs, marked as dependencies
    assert (tmp_path / "apt-get.args").read_text().split()[-5:] == [
        "--mark-auto", "linux-image-6.1.0-57-amd64", "linux-image-amd64", "dmsetup", "udev"]
    assert (root / initramfs.HOOK.lstrip("/")).is_file()  # the policy, before the packages
    assert not (root / f"boot/initrd.img-{KERNEL}").exists()
    (root / CALLS.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / CALLS.lstrip("/")).write_text("-u\n")   # a later package asks for one meanwhile
    waited = hook(wait_hook("disk", staging, target), root, env)
    assert waited.returncode == 0, waited.stderr
    made = (root / f"boot/initrd.img-{KERNEL}").read_text()
    assert made == "made -c -k all at 1700000000 by 2\n"   # the kernel's date, two zstd workers
    w = work_dir(target)
    assert (w / "status").read_text() == "0\n" and "Generating" in (w / "log").read_text()
    assert (w / "calls").read_text() == "-u\n" and not (root / CALLS.lstrip("/")).exists()
    assert (root / "usr/sbin/update-initramfs").read_text() == UPDATE_INITRAMFS  # back from its diversion
    assert (w / "status-before").read_text().startswith("Package: udev")
    assert reasons_to_remake(root) == ["a package ran update-initramfs -u"]


def test_a_failed_update_initramfs_fails_the_install_with_its_output(tmp_path):
    root, env = fake_tree(tmp_path)
    staging = initramfs_staging(root)
    assert hook(start_hook(["linux-image-amd64"], "most", staging, root), root, {**env, "FAKE_RC": "1"}
                ).returncode == 0
    waited = hook(wait_hook("most", staging, root), root, env)
    assert waited.returncode == 1
    assert "update-initramfs failed" in waited.stderr and "Generating /boot/initrd.img" in waited.stderr


def test_without_a_kernel_by_then_it_is_made_after_every_package(tmp_path):
    root, env = fake_tree(tmp_path)
    (root / f"boot/vmlinuz-{KERNEL}").unlink()          # the kernel comes in with the other packages
    staging = initramfs_staging(root)
    assert hook(start_hook(["udev"], "most", staging, root), root, env).returncode == 0
    assert not (work_dir(root) / "started").exists()
    (root / f"boot/vmlinuz-{KERNEL}").write_bytes(b"k")
    os.utime(root / f"boot/vmlinuz-{KERNEL}", (1700000001, 1700000001))
    # what the wait finds in place once the diversion is gone: the real update-initramfs
    waited = hook(wait_hook("most", staging, root), root, env)
    assert waited.returncode == 0, waited.stderr
    assert (root / f"boot/initrd.img-{KERNEL}").read_text() == "made -c -k all at 1700000001 by 2\n"
    assert reasons_to_remake(root) == []   # none was made beside: nothing to prove


# --- the check: what the packages installed after it brought ------------------------------------------

def dpkg_tree(tmp_path: Path, later: dict[str, list[str]]) -> Path:
    """A tree where udev was in when the initramfs started and ``later`` came after, with its files."""
    root = tmp_path / "rootfs"
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("\n".join(STANZA.format(p) for p in ["udev", *later]))
    hooks = root / "usr/share/initramfs-tools/hooks"
    hooks.mkdir(parents=True)
    (hooks / "udev").write_text("for rules in 50-udev-default.rules 71-seat.rules; do cp -p $rules; done\n"
                                "copy_exec /usr/sbin/dmsetup\nlocal devlink\n")
    (hooks / "fsck").write_text('if prog="$(command -v "fsck.${type}")"; then copy_exec "$prog"; fi\n'
                                "command -v zstd >/dev/null\n")
    (root / "usr/share/initramfs-tools/scripts").mkdir()
    (root / "usr/share/initramfs-tools/scripts/functions").write_text("ip= less top\n")  # boot-time code
    for package, paths in later.items():
        (info / f"{package}.list").write_text("".join(f"{p}\n" for p in ["/.", *paths]))
        for p in paths:
            f = root / p.lstrip("/")
            if p.endswith("/"):
                f.mkdir(parents=True, exist_ok=True)
            else:
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text("x")
    w = work_dir(root)
    w.mkdir()
    (w / "started").touch()
    (w / "status-before").write_text(STANZA.format("udev"))
    return root


def test_packages_that_bring_nothing_it_reads_leave_it_as_made(tmp_path):
    root = dpkg_tree(tmp_path, {
        "cloud-init": ["/lib/udev/rules.d/", "/lib/udev/rules.d/66-azure-ephemeral.rules", "/usr/bin/cloud-init"],
        "iproute2": ["/bin/ip", "/sbin/ip", "/usr/sbin/devlink"], "procps": ["/usr/bin/top"],
        "less": ["/usr/bin/less"]})   # devlink: a variable's name in hook-functions, not a program it copies
    assert reasons_to_remake(root) == []


def test_each_file_that_feeds_it_is_named(tmp_path):
    root = dpkg_tree(tmp_path, {
        "systemd": ["/lib/modprobe.d/systemd.conf", "/lib/udev/rules.d/71-seat.rules", "/bin/systemctl"],
        "dmsetup": ["/sbin/dmsetup", "/usr/share/initramfs-tools/hooks/dmsetup"],
        "firmware-misc-nonfree": ["/lib/firmware/", "/lib/firmware/foo.bin"],
        "some-dkms-module": ["/usr/lib/modules/6.1.0-57-amd64/updates/x.ko"],
        "keyboard": ["/etc/initramfs-tools/conf.d/keymap"],
        "xfsprogs": ["/usr/sbin/fsck.xfs", "/usr/sbin/xfs_repair"], "zstd": ["/usr/bin/zstd", "/usr/bin/zstdcat"]})
    assert reasons_to_remake(root) == [
        "dmsetup brought /sbin/dmsetup", "dmsetup brought /usr/share/initramfs-tools/hooks/dmsetup",
        "firmware-misc-nonfree brought /lib/firmware/foo.bin",
        "keyboard brought /etc/initramfs-tools/conf.d/keymap",
        "some-dkms-module brought /usr/lib/modules/6.1.0-57-amd64/updates/x.ko",
        "systemd brought /lib/modprobe.d/systemd.conf", "systemd brought /lib/udev/rules.d/71-seat.rules",
        "xfsprogs brought /usr/sbin/fsck.xfs", "zstd brought /usr/bin/zstd"]


def test_a_multiarch_package_s_file_list_is_read(tmp_path):
    root = dpkg_tree(tmp_path, {})
    info = root / "var/lib/dpkg/info"
    (root / "var/lib/dpkg/status").write_text(STANZA.format("udev") + "\n" + STANZA.format("libfoo1"))
    (info / "libfoo1:amd64.list").write_text("/lib/modprobe.d/foo.conf\n")
    assert reasons_to_remake(root) == ["libfoo1 brought /lib/modprobe.d/foo.conf"]


def test_remake_runs_update_initramfs_in_a_chroot_of_the_tree(tmp_path):
    """A real chroot, on a tree whose shell is the host's static busybox (scripts/setup-host installs it)."""
    root = tmp_path / "rootfs"
    for d in ("bin", "boot", "usr/sbin", "dev", "proc", "sys"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/sh")
    (root / f"boot/vmlinuz-{KERNEL}").write_bytes(b"k")
    os.utime(root / f"boot/vmlinuz-{KERNEL}", (1700000002, 1700000002))
    update = root / "usr/sbin/update-initramfs"
    # inside the chroot, / is the tree
    update.write_text(UPDATE_INITRAMFS.replace("sleep 1\n", "").replace("$FAKE_ROOT", ""))
    update.chmod(0o755)
    seen: list[str] = []
    reporter = Reporter()
    reporter.info = seen.append  # type: ignore[method-assign]
    remake(root, [f"r{i} brought /x" for i in range(7)], reporter)
    assert (root / f"boot/initrd.img-{KERNEL}").read_text() == "made -u -k all at 1700000002 by 2\n"
    assert seen == ["initramfs: made again after every package, because r0 brought /x; r1 brought /x; "
                    "r2 brought /x; r3 brought /x; r4 brought /x (and 2 more)"]
    assert not any(str(root) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())

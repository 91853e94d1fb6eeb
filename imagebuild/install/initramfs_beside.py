"""The initramfs made beside the packages that do not feed it (mmdebstrap's hooks, then a check).

Left alone, Debian makes the initramfs twice (when the kernel is configured, and again in
initramfs-tools' trigger once udev, kmod and e2fsprogs are in), so update-initramfs is diverted to a
no-op while the packages go in (``HOLD``) and made once. mkinitramfs is one shell loop of ~9,600 short
processes (12-15 s here), and it used to run alone at the end of the install, one core busy and the
other idle. What goes into it comes from a few packages only:
the kernel, initramfs-tools, udev, kmod, systemd (a udev rule and a modprobe.d file), dmsetup (which
apt brings with systemd on Debian 12 and with grub on 13), the filesystems' tools and the growroot hook.
So the install goes in two steps:

1. **The packages that feed it** (those of ``FEEDS`` among all that apt would install for the recipe:
   its simulation) are installed right after the essential set, by the host's apt-get with the tree's
   dpkg, as mmdebstrap itself installs, and marked as installed automatically (mmdebstrap's own install
   then marks the recipe's packages manual, as one install of them all does). ``update-initramfs -c -k
   all`` then starts in the background, holding a lock (``start_hook``, an essential-hook).
2. **mmdebstrap installs the rest meanwhile** (cloud-init and its Python, sshd, grub, the tools), and
   ``wait_hook`` (a customize-hook) waits for the lock, fails the install if update-initramfs failed,
   and puts update-initramfs back from its diversion (``HOLD``, which turned it into a no-op that
   records who called it).

Then ``reasons_to_remake`` proves on the tree that the rest fed nothing in: no package asked for an
initramfs after it was started (the no-op's record), and none brought a file mkinitramfs reads
(initramfs-tools' own directories, kernel modules, firmware, modprobe.d), a udev rule, helper or
library that a hook names, or a program a hook copies by its path or finds with ``command -v``.
Anything found is logged and the initramfs is made again, after every package (``remake``).

The result is the same file, byte for byte, as the initramfs made after every package (debian12 and
debian13, measured). Without dmsetup and systemd in the first step it lacks 71-seat.rules, systemd's
modprobe.d file and dmsetup, which is what the check is for (``tests/unit/test_initramfs_beside.py``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..attest.dpkg import installed_packages
from ..events import Reporter
from ..run import run
from . import initramfs

# Packages whose files mkinitramfs or its hooks read: exact names, or a prefix ending in "-"
FEEDS = ("linux-image-", "initramfs-tools", "udev", "kmod", "systemd", "systemd-sysv", "e2fsprogs", "zstd",
         "cloud-initramfs-", "cloud-guest-utils", "busybox", "klibc-utils", "dmsetup", "lvm2", "mdadm",
         "cryptsetup-initramfs", "btrfs-progs", "xfsprogs", "firmware-")
# the diverted update-initramfs writes its arguments here (in the tree) each time a package calls it
CALLS = "/var/lib/imagebuild-update-initramfs.calls"
HOLD = ('--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename '
        '--divert /usr/sbin/update-initramfs.imagebuild --add /usr/sbin/update-initramfs && '
        "printf '%s\\n' '#!/bin/sh' '# imagebuild: made once, beside the packages that do not feed it' "
        f"'echo \"$*\" >> {CALLS}' 'exit 0' > \"$1/usr/sbin/update-initramfs\" && "
        'chmod 755 "$1/usr/sbin/update-initramfs"')
RESTORE = ('rm -f "$1/usr/sbin/update-initramfs" && '
           'chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs')
# SOURCE_DATE_EPOCH: mkinitramfs clamps the archive's times to it and writes it reproducibly (cpio
# --reproducible, and zstd without -T0, whose output would follow the CPU count); the kernel's date is
# the initramfs's. ZSTD_NBTHREADS=2, a fixed count: zstd's output is the same for any count of workers.
EPOCH = 'SOURCE_DATE_EPOCH=$(stat -c %Y "$1"/boot/vmlinuz-* | sort -n | tail -n 1) ZSTD_NBTHREADS=2'
KERNEL = 'ls "$1"/boot/vmlinuz-* >/dev/null 2>&1'
# the same options mmdebstrap gives its own apt-get for the packages after the essential set
APT = ('APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get -q -o Dir::Bin::dpkg=env -o DPkg::Options::=--unset=TMPDIR '
       '-o DPkg::Options::=dpkg -o DPkg::Chroot-Directory="$1" --yes install')
# what mkinitramfs reads whatever its hooks say (paths without a leading /usr)
READ_TREES = ("/lib/modules/", "/lib/firmware/", "/lib/modprobe.d/", "/etc/modprobe.d/", "/lib/initramfs-tools/",
              "/share/initramfs-tools/", "/etc/initramfs-tools/")
# what a hook copies by name: udev rules and helpers (in a list: "for rules in 71-seat.rules ..."),
# libraries; a program by its path ("copy_exec /sbin/dmsetup") or as "command -v NAME"
NAMED_TREES = ("/lib/udev/", "/etc/udev/", "/lib/x86_64-linux-gnu/")
PROGRAM_TREES = ("/bin/", "/sbin/")
# the code that runs when the initramfs is made (its scripts run at boot, and are read whole anyway)
HOOK_TEXTS = ("usr/share/initramfs-tools/hooks", "etc/initramfs-tools/hooks",
              "usr/share/initramfs-tools/hook-functions", "usr/sbin/mkinitramfs")


def feed_pattern() -> str:
    """``FEEDS`` as one extended regular expression for a whole package name (grep -xE, re.fullmatch)."""
    names = [f.replace(".", "\\.").replace("+", "\\+") for f in FEEDS]
    return "|".join(f"{n}.*" if n.endswith("-") else n for n in names)


def work_dir(target: Path) -> Path:
    """Beside the tree: the lock, the exit status and the log of the background update-initramfs, the
    package list when it started, and what called update-initramfs after."""
    return target.parent / "initramfs-beside"


def start_hook(packages: list[str], policy: str, staging: Path, target: Path) -> str:
    """The essential-hook: the policy's files (``initramfs.copy_in``); the packages that feed the
    initramfs among all that apt will install for ``packages`` (its simulation: ``dmsetup`` comes with
    systemd on Debian 12 and with grub on 13), marked as installed automatically (mmdebstrap's own
    install then marks the recipe's as manual, as one install of them all would); then update-initramfs
    started in the background, if a kernel and initramfs-tools are in by then."""
    w = work_dir(target)
    q = shlex.quote
    return ("--essential-hook=" + initramfs.copy_in(policy, staging)
            + f"feed=$({APT} -s {shlex.join(packages)} | sed -n 's/^Inst \\([^ :]*\\).*/\\1/p' "
            f"| grep -xE {q(feed_pattern())} | tr '\\n' ' ') && "
            f'if [ -n "$feed" ]; then {APT} --mark-auto $feed; fi && '
            f'mkdir -p {q(str(w))} && rm -f "$1{CALLS}" && '
            f'cp "$1/var/lib/dpkg/status" {q(str(w / "status-before"))} && '
            f'if [ -x "$1/usr/sbin/update-initramfs.imagebuild" ] && {KERNEL}; then '
            f': > {q(str(w / "started"))} && exec 9> {q(str(w / "lock"))} && flock 9 && '
            f'( {EPOCH} chroot "$1" /usr/sbin/update-initramfs.imagebuild -c -k all; '
            f'echo $? > {q(str(w / "status"))} ) > {q(str(w / "log"))} 2>&1 < /dev/null & fi')


def wait_hook(policy: str, staging: Path, target: Path) -> str:
    """The customize-hook: wait for the background update-initramfs and fail if it did, keep the record
    of later calls, restore update-initramfs; and where none was started (the kernel came in with the
    other packages), make the initramfs now, after every package."""
    w = work_dir(target)
    q = shlex.quote
    return (f"--customize-hook=mkdir -p {q(str(w))} && flock {q(str(w / 'lock'))} true && "
            f'if [ -e {q(str(w / "started"))} ] && [ "$(cat {q(str(w / "status"))} 2>/dev/null)" != 0 ]; then '
            f'echo "imagebuild: update-initramfs failed:" >&2; cat {q(str(w / "log"))} >&2; exit 1; fi && '
            f'if [ -e "$1{CALLS}" ]; then mv "$1{CALLS}" {q(str(w / "calls"))}; fi && {RESTORE} && '
            f'if ! [ -e {q(str(w / "started"))} ] && [ -x "$1/usr/sbin/update-initramfs" ] && {KERNEL}; then '
            f'{initramfs.copy_in(policy, staging)}{EPOCH} chroot "$1" update-initramfs -c -k all; fi')


def _installed(status: Path) -> set[str]:
    return {p.name for p in installed_packages(status.read_text(), what=str(status))}


@dataclass
class HookNames:
    """What initramfs-tools' hooks, hook-functions and mkinitramfs name (paths without a leading /usr)."""

    words: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)     # command -v NAME
    prefixes: set[str] = field(default_factory=set)     # command -v "fsck.${type}": fsck.

    @classmethod
    def read(cls, root: Path) -> HookNames:
        names = cls()
        for rel in HOOK_TEXTS:
            top = root / rel
            for f in [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]:
                text = f.read_text(errors="replace")
                names.words.update(re.findall(r"[\w.+-]+", text))
                names.paths.update(_bare(p) for p in re.findall(r"/[\w.+/-]*[\w+-]", text))
                for name, variable in re.findall(r'command -v "?([\w.+-]*)(\$?)', text):
                    if variable and name:
                        names.prefixes.add(name)
                    elif not variable and name:
                        names.commands.add(name)
        return names


def _bare(path: str) -> str:
    return path[4:] if path.startswith("/usr/") else path


def _files(root: Path, package: str) -> list[str]:
    info = root / "var/lib/dpkg/info"
    lists = [info / f"{package}.list", *sorted(info.glob(f"{package}:*.list"))]
    return [line for f in lists if f.is_file() for line in f.read_text().splitlines() if line.startswith("/")]


def feeds(path: str, names: HookNames, root: Path) -> bool:
    """Whether the file ``path`` (as dpkg lists it) is read into an initramfs."""
    target = root / path.lstrip("/")
    if target.is_dir() and not target.is_symlink():
        return False
    bare, base = _bare(path), path.rsplit("/", 1)[-1]
    if bare.startswith(READ_TREES):
        return True
    if bare.startswith(PROGRAM_TREES):
        return bare in names.paths or base in names.commands or base.startswith(tuple(names.prefixes))
    return bare.startswith(NAMED_TREES) and base in names.words


def reasons_to_remake(root: Path) -> list[str]:
    """Why the initramfs made beside the other packages of the tree ``root`` may differ from one made
    after them: a call of update-initramfs after it started, and each file those packages brought that
    feeds it. Empty: it is the same."""
    w = work_dir(root)
    if not (w / "started").exists():
        return []
    reasons = [f"a package ran update-initramfs {' '.join(line.split())}".rstrip()
               for line in (w / "calls").read_text().splitlines()] if (w / "calls").exists() else []
    later = _installed(root / "var/lib/dpkg/status") - _installed(w / "status-before")
    names = HookNames.read(root)
    reasons += [f"{package} brought {path}" for package in sorted(later)
                for path in _files(root, package) if feeds(path, names, root)]
    return reasons


def remake(root: Path, reasons: list[str], reporter: Reporter) -> None:
    """The initramfs made again, after every package, in a chroot of the tree."""
    reporter.info("initramfs: made again after every package, because " + "; ".join(reasons[:5])
                  + (f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""))
    r = shlex.quote(str(root))
    script = "\n".join([
        "set -eu", f"set -- {r}",
        f"mount --bind /dev {r}/dev", f"mount -t proc proc {r}/proc", f"mount -t sysfs sysfs {r}/sys",
        f'{EPOCH} chroot {r} update-initramfs -u -k all',
        f"umount {r}/sys {r}/proc {r}/dev"]) + "\n"
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], reporter=reporter,
        purpose="make the initramfs again, after the packages that feed it")

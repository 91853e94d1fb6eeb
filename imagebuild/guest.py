"""The image as libguestfs shows it: long calls interruptible, and the disk's layout rules.

A ``Guest`` wraps one launched handle (``appliance.open_guest`` launches it) with the single ``/``
filesystem mounted, and offers the few file operations the generalization steps need, so each step
reads as what it does to the image.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .disklayout import ESP_MOUNT, GPT_TYPE, Role, layout_for
from .errors import CustomizeFailed, ToolMissing
from .events import Reporter
from .procs import kill_descendants
from .recipe import Firmware
from .run import call_interruptibly, quote

try:
    import guestfs
except ImportError:  # pragma: no cover - reported by require_guestfs()
    guestfs = None


def require_guestfs() -> None:
    if guestfs is None:
        raise ToolMissing("the libguestfs Python bindings are missing: install python3-guestfs and use a venv "
                          "made from /usr/bin/python3 with --system-site-packages (./inv does this)")


class GuestError(CustomizeFailed):
    pass


def kill_appliance() -> None:
    """Break a blocked libguestfs call: the appliance (and any helper) is a descendant of ours."""
    kill_descendants()


_SYSFS_MARK = "--- imagebuild: block devices ---"
READ_CHUNK = 1 << 20  # bytes per pread: the protocol refuses 4 MiB; 1 MiB pieces copy fastest


@dataclass(frozen=True)
class GroupResult:
    """One group of ``Guest.side_by_side``: its commands, exit status and output."""
    argv: str
    rc: int
    output: str


class Guest:
    def __init__(self, g: Any, reporter: Reporter, firmware: Firmware = Firmware.BIOS) -> None:
        self.g = g
        self.reporter = reporter
        self.firmware = firmware            # the disk layout the image must have
        self.root_device = ""
        self.esp_device = ""                # mounted at /boot/efi when the layout has an ESP
        self._devices: list[str] | None = None
        self._partitions: list[str] | None = None

    # -- the appliance's disks: listed once (0.2 s a call under emulation); nothing here repartitions
    def devices(self) -> list[str]:
        if self._devices is None:
            self._devices = list(self.g.list_devices())
        return list(self._devices)

    def partitions(self) -> list[str]:
        if self._partitions is None:
            self._partitions = list(self.g.list_partitions())
        return list(self._partitions)

    # -- calls that may block for long run in a worker thread, so signals stay prompt -------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.g, name)
        try:
            return call_interruptibly(lambda: fn(*args, **kwargs), on_interrupt=kill_appliance)
        except RuntimeError as exc:  # guestfs reports every failure as RuntimeError
            raise GuestError(f"libguestfs {name}{args!r} failed: {exc}") from None

    def command(self, argv: list[str], *, purpose: str = "") -> str:
        """Run a program inside the image (chrooted, /dev /proc /sys available)."""
        self.reporter.log(f"[guest] $ {quote(argv)}" + (f"    # {purpose}" if purpose else ""))
        out: str = self.call("command", argv)
        for line in out.splitlines()[-40:]:
            self.reporter.log(f"[guest]   {line}")
        return out

    def side_by_side(self, groups: dict[str, list[list[str]]], *, purpose: str = "") -> dict[str, GroupResult]:
        """Run each group's commands one after the other, and the groups at the same time, in one call
        inside the image; every group's exit status and output. A group stops at its first failure."""
        marker = "--- imagebuild: group"
        script = ['d=$(mktemp -d /tmp/imagebuild-group.XXXXXX) || exit 1']
        for i, cmds in enumerate(groups.values()):
            script.append(f'{{ ( {" && ".join(quote(c) for c in cmds) or "true"} ) >"$d/{i}" 2>&1 </dev/null; '
                          f'echo $? >"$d/{i}.rc"; }} &')
        script.append("wait")
        script += [f'echo "{marker} {i} $(cat "$d/{i}.rc")"; cat "$d/{i}"' for i in range(len(groups))]
        script.append('rm -rf "$d"')
        for name, cmds in groups.items():
            self.reporter.log(f"[guest] $ {' && '.join(quote(c) for c in cmds)}    # {name}, side by side"
                              + (f": {purpose}" if purpose else ""))
        out = self.command(["sh", "-c", "\n".join(script)])
        results: dict[str, GroupResult] = {}
        names = list(groups)
        for chunk in out.split(marker)[1:]:
            head, _, body = chunk.partition("\n")
            index, _, rc = head.strip().partition(" ")
            name = names[int(index)]
            results[name] = GroupResult(" && ".join(quote(c) for c in groups[name]),
                                        int(rc) if rc.strip().lstrip("-").isdigit() else -1, body)
        for name in names:
            results.setdefault(name, GroupResult(" && ".join(quote(c) for c in groups[name]), -1,
                                                 "(no result: the group did not report)"))
        return results

    def kernel_disk_of_root(self) -> tuple[str, int]:
        """The appliance kernel's name for the disk under the mounted `/` and the partition number.

        libguestfs renames devices in its API (`/dev/sda` is always the first disk added), but a
        program run by `command` sees the appliance's own kernel names, and the kernel may number
        our disk after the appliance's root disk. A boot loader installed on the API name would then
        go to the wrong disk, so ask the kernel which disk holds `/`.
        """
        # one command (each costs about a second under emulation): the mount table, then every block
        # device's disk and partition number
        out = self.command(["sh", "-c", "cat /proc/self/mountinfo; echo " + _SYSFS_MARK + "; "
                            "for d in /sys/dev/block/*; do echo \"${d##*/} $(readlink -f $d/..) "
                            "$(cat $d/partition 2>/dev/null)\"; done"])
        mountinfo, _, sysfs = out.partition(_SYSFS_MARK)
        majmin = root_majmin(mountinfo)
        disk = part = ""
        for line in sysfs.splitlines():
            fields = line.split()
            if fields and fields[0] == majmin:
                disk = fields[1].rsplit("/", 1)[-1] if len(fields) > 1 else ""
                part = fields[2] if len(fields) > 2 else ""
        if not disk or not part.isdigit():
            raise GuestError(f"cannot relate the root filesystem ({majmin}) to a disk: {disk!r} {part!r}")
        return f"/dev/{disk}", int(part)

    # -- the disk shared with the host --------------------------------------------------------------
    def release_disk(self) -> None:
        """Unmount every filesystem and flush the appliance's writes into the disk file, so that the host
        may write the disk (``remount`` takes it back)."""
        self.call("umount_all")
        self.call("sync")

    def drop_cached_reads(self) -> None:
        """Forget what the appliance's kernel read of the disk, which the host wrote meanwhile: Linux drops
        a block device's page cache at its last close, and BLKFLSBUF covers anything still open."""
        for dev in [*self.devices(), *self.partitions()]:
            self.g.blockdev_flushbufs(dev)

    def remount(self) -> None:
        """Mount the disk again by its layout after the host wrote it (``release_disk``)."""
        self.drop_cached_reads()
        self.mount_layout()

    # -- files -------------------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return bool(self.g.exists(path))

    def is_file(self, path: str) -> bool:
        return bool(self.g.is_file(path, followsymlinks=False))

    def is_dir(self, path: str) -> bool:
        return bool(self.g.is_dir(path, followsymlinks=False))

    def is_symlink(self, path: str) -> bool:
        return self.lexists(path) and bool(self.g.is_symlink(path))

    def read(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8", "replace")

    def read_bytes(self, path: str) -> bytes:
        return b"".join(self._pieces(path))

    def _pieces(self, path: str) -> Iterator[bytes]:
        """A file's bytes through ``pread`` (a few ms a call; ``read_file`` and ``download`` go through
        libguestfs' file transfer, ~170 ms even for a small file under emulation), in pieces the
        protocol allows."""
        offset = 0
        while chunk := bytes(self.g.pread(path, READ_CHUNK, offset)):
            yield chunk
            offset += len(chunk)

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        self.g.mkdir_p(posixpath.dirname(path) or "/")
        self.g.write(path, text.encode())
        if mode is not None:
            self.g.chmod(mode, path)

    def stat_mode(self, path: str) -> int | None:
        """``st_mode`` of what ``path`` names, symlinks followed (None: nothing there)."""
        try:
            return int(self.g.statns(path)["st_mode"])
        except RuntimeError:
            return None

    def lexists(self, path: str) -> bool:
        try:
            self.g.lstatns(path)
            return True
        except RuntimeError:
            return False

    def remove(self, path: str) -> bool:
        """Remove a file or symlink; True if something was there."""
        if self.lexists(path):
            self.g.rm_f(path)
            return True
        return False

    def remove_tree(self, path: str) -> None:
        self.g.rm_rf(path)

    def glob(self, pattern: str) -> list[str]:
        """Paths matching a shell pattern in the image (only the last component may have wildcards)."""
        parent, leaf = posixpath.split(pattern)
        if not self.g.is_dir(parent):
            return []
        return sorted(posixpath.join(parent, n) for n in self.g.ls(parent) if fnmatch.fnmatch(n, leaf))

    def find_files(self, top: str) -> list[str]:
        """Every regular file below ``top`` (absolute paths)."""
        if not self.g.is_dir(top):
            return []
        out = []
        for rel in self.g.find(top):  # names come back as "/a/b", relative to top
            p = top.rstrip("/") + "/" + rel.lstrip("/")
            if self.g.is_file(p, followsymlinks=False):
                out.append(p)
        return sorted(out)

    def truncate(self, path: str) -> None:
        self.g.truncate(path)

    def filesize(self, path: str) -> int:
        return int(self.g.filesize(path))

    def ls(self, path: str) -> list[str]:
        return list(self.g.ls(path))

    def mkdir_p(self, path: str) -> None:
        self.g.mkdir_p(path)

    def download(self, path: str, dest: Path) -> None:
        """Copy a file out of the image to the host, a ``pread`` at a time (a 21 MB initramfs in 0.2 s;
        libguestfs' ``download`` takes 0.5 s under emulation)."""
        with open(dest, "wb") as out:
            for chunk in self._pieces(path):
                out.write(chunk)

    def partition_problems(self) -> list[str]:
        """What the disk's partitions break of the layout rules (``layout_problems``)."""
        return layout_problems(self)

    def edit_lines(self, path: str, keep: Any) -> int:
        """Rewrite ``path`` keeping lines for which ``keep(line)`` is true; returns lines removed."""
        text = self.read(path)
        lines = text.splitlines(keepends=True)
        kept = [ln for ln in lines if keep(ln)]
        if len(kept) != len(lines):
            self.g.write(path, "".join(kept).encode())
        return len(lines) - len(kept)

    def symlink(self, target: str, link: str) -> None:
        self.g.ln_sf(target, link)

    # -- layout ------------------------------------------------------------------------------------
    def block_ids(self, devices: list[str] | None = None) -> dict[str, dict[str, str]]:
        """Device → what ``blkid -p`` reads there (TYPE, PTTYPE, PART_ENTRY_TYPE...; empty where it finds
        nothing) for each disk, partition and md device: one call each (~0.25 s under emulation), where
        ``list_filesystems`` (2.5-3.5 s: it also scans for LVM, LDM and btrfs subvolumes) and parted's
        table type (0.9 s) cost seconds. LVM is found by its physical volumes' signature. ``devices``:
        the disks, where the caller has already listed them."""
        g = self.g
        found: dict[str, dict[str, str]] = {}
        disks = devices if devices is not None else self.devices()
        for dev in [*disks, *self.partitions(), *g.list_md_devices()]:
            try:
                found[dev] = dict(g.blkid(dev))
            except RuntimeError:  # blkid found no signature (exit 2): a blank or BIOS boot partition
                found[dev] = {}
        return found

    def mount_layout(self) -> None:
        """Mount a disk the host has just assembled and checked (partition starts and filesystem ids,
        with blkid): by its layout's partition numbers, checking only each filesystem's type. The full
        probe of the disk (``layout_problems``, seconds under emulation) still runs in the post-check
        of the ``layout`` step, before the image can ship."""
        layout = layout_for(self.firmware)
        disk = self.devices()[0]
        root = f"{disk}{layout.root.number}"
        fstype = self.g.vfs_type(root)
        if fstype in ("", "unknown", "swap", "vfat"):
            raise CustomizeFailed(f"partition {layout.root.number} of the assembled disk holds {fstype or 'nothing'}, "
                                  "not the root filesystem")
        self.root_device = root
        self.g.mount(root, "/")
        if layout.esp is not None:
            esp = f"{disk}{layout.esp.number}"
            if self.g.vfs_type(esp) != "vfat":
                raise CustomizeFailed(f"partition {layout.esp.number} of the assembled disk is not the vfat ESP")
            self.esp_device = esp
            self.g.mkdir_p(ESP_MOUNT)
            self.g.mount(esp, ESP_MOUNT)

    def mount_root(self) -> None:
        """Mount the image's one Linux filesystem at / (and its ESP at /boot/efi where the layout has
        one); a disk that breaks its layout (a second filesystem, swap, LVM) is refused here."""
        found = classify_partitions(self)  # once: each probe costs seconds under emulation
        problems = layout_problems(self, found)
        if problems:
            raise CustomizeFailed(f"the disk layout breaks the golden-image rule for a {self.firmware} image "
                                  "(exactly one Linux filesystem, mounted at /, no swap, no LVM, and only "
                                  "the boot partitions its firmware needs):\n  " + "\n  ".join(problems))
        self.root_device = found.root
        self.g.mount(self.root_device, "/")
        if found.esp:
            self.esp_device = found.esp
            self.g.mkdir_p(ESP_MOUNT)
            self.g.mount(found.esp, ESP_MOUNT)


def root_majmin(mountinfo: str) -> str:
    """`major:minor` of the filesystem mounted last on `/` in a /proc/self/mountinfo text."""
    found = ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and re.fullmatch(r"\d+:\d+", fields[2]):
            found = fields[2]
    if not found:
        raise GuestError("no filesystem is mounted on / (mountinfo has no such line)")
    return found


@dataclass
class Partitions:
    """What a disk holds, sorted by what the layout rules care about."""
    table: str = ""                                   # "msdos", "gpt" or "" (none)
    root: str = ""                                    # the one Linux filesystem, if exactly one
    esp: str = ""                                     # vfat on an ESP-typed GPT partition
    bios_boot: str = ""
    linux: dict[str, str] = field(default_factory=dict)   # device → fs type (not the ESP)
    swap: list[str] = field(default_factory=list)
    lvm_pvs: list[str] = field(default_factory=list)     # LVM physical volumes (blkid: LVM2_member)
    raid_members: list[str] = field(default_factory=list)  # md RAID members (linux_raid_member)
    partitions: list[str] = field(default_factory=list)
    whole_disk_fs: list[str] = field(default_factory=list)


def classify_partitions(guest: Guest) -> Partitions:
    found = Partitions()
    devices = guest.devices()
    ids = guest.block_ids(devices)
    found.partitions = [d for d in ids if d not in devices and not d.startswith("/dev/md")]
    if devices:
        pttype = ids.get(devices[0], {}).get("PTTYPE", "")
        found.table = {"dos": "msdos"}.get(pttype, pttype)
    for dev, blk in ids.items():
        fstype = blk.get("TYPE", "")
        if dev in devices and any(p.startswith(dev) for p in found.partitions):
            continue  # a partitioned disk: its partitions are what counts
        if fstype == "swap":
            found.swap.append(dev)
            continue
        if fstype.startswith("LVM2_"):
            found.lvm_pvs.append(dev)
            continue
        if fstype == "linux_raid_member":
            found.raid_members.append(dev)
            continue
        gpt_type = ""
        if found.table == "gpt" and dev in found.partitions:
            gpt_type = blk.get("PART_ENTRY_TYPE", "").upper()
            if not gpt_type:  # blkid gives the entry's type even without a filesystem; parted as a fallback
                num = int(re.sub(r"^.*?(\d+)$", r"\1", dev))
                gpt_type = guest.g.part_get_gpt_type(re.sub(r"\d+$", "", dev), num).upper()
        if gpt_type == GPT_TYPE[Role.BIOS_BOOT]:
            found.bios_boot = dev
        elif fstype == "vfat" and gpt_type == GPT_TYPE[Role.ESP]:
            found.esp = dev
        elif fstype not in ("unknown", ""):
            found.linux[dev] = fstype
    found.whole_disk_fs = [d for d in found.linux if d in devices]
    if len(found.linux) == 1:
        found.root = next(iter(found.linux))
    return found


def layout_problems(guest: Guest, found: Partitions | None = None) -> list[str]:
    """Everything about the disk that breaks the layout its firmware allows (disklayout.LAYOUTS)."""
    layout = layout_for(guest.firmware)
    found = found if found is not None else classify_partitions(guest)
    problems = []
    if found.swap:
        problems.append(f"swap partition(s): {', '.join(found.swap)}")
    if found.lvm_pvs:  # lvs scans every device (1-2 s under emulation): only where blkid saw a PV
        lvs = guest.g.lvs()
        problems.append(f"LVM logical volumes: {', '.join(lvs)}" if lvs else
                        f"LVM physical volume(s): {', '.join(found.lvm_pvs)}")
    if found.raid_members:
        problems.append(f"md RAID member(s): {', '.join(found.raid_members)}")
    if len(found.linux) != 1:
        desc = ", ".join(f"{d} ({t})" for d, t in found.linux.items()) or "none"
        problems.append(f"expected exactly one Linux filesystem, found {len(found.linux)}: {desc}")
    if found.whole_disk_fs:
        problems.append(f"filesystem on the whole disk {', '.join(found.whole_disk_fs)}: "
                        f"expected a partition table")
    want_table = "msdos" if layout.label == "dos" else "gpt"
    if found.partitions and found.table and found.table != want_table:
        problems.append(f"a {found.table} partition table: a {guest.firmware} image has {want_table}")
    if found.esp and layout.esp is None:
        problems.append(f"an EFI system partition ({found.esp}) on a {guest.firmware} image, which "
                        "boots from BIOS only: build it with image.firmware = \"uefi\" or \"hybrid\"")
    if layout.esp is not None and not found.esp and found.partitions:
        problems.append(f"no EFI system partition: a {guest.firmware} image needs one (vfat, GPT type ESP)")
    if found.bios_boot and layout.part(Role.BIOS_BOOT) is None:
        problems.append(f"a BIOS boot partition ({found.bios_boot}) on a {guest.firmware} image")
    if layout.part(Role.BIOS_BOOT) is not None and not found.bios_boot and found.partitions:
        problems.append(f"no BIOS boot partition: a {guest.firmware} image needs one for grub's i386-pc "
                        "core image (GPT type BIOS boot)")
    if len(found.partitions) > len(layout.partitions):
        problems.append(f"expected {len(layout.partitions)} partition(s) for a {guest.firmware} image, "
                        f"found {len(found.partitions)}: {', '.join(found.partitions)}")
    return problems

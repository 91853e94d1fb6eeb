"""The golden-image policy for kickstarts (docs/answer-files.md lists the rules): one root partition that
grows, no swap, LVM, RAID or btrfs, a self-contained file, crypted passwords, DHCP, a serial console,
poweroff at the end, and the recipe's packages; checked on whatever ``parse.py`` could read."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..findings import Findings, Problem
from ..password import CRYPT_HASH_RE
from ..render import SERIAL_CONSOLE
from ..shape import SHAPE_RULES
from .parse import line_of, parse_with_templates

# Every rule the lint applies, with what it guards (docs/answer-files.md has the messages).
KICKSTART_RULES = {
    **SHAPE_RULES,
    "syntax": "pykickstart parses every line for the target's syntax version (RHEL7 for EL 7, RHEL9, F40...)",
    "parse-warning": "pykickstart's warnings (a duplicate definition) are errors",
    "include": "no %include / %ksappend: the file is self-contained",
    "no-root": "there is a 'part /' (a plain partition, not LVM, RAID or btrfs)",
    "mount-point": "'/' is the only mount point, defined once",
    "extra-partition": "no biosboot, /boot/efi or other platform partition",
    "swap": "no swap (part swap, logvol swap, autopart without --noswap)",
    "lvm": "no LVM (part pv.*, volgroup, logvol, autopart's default type)",
    "raid": "no RAID",
    "btrfs": "no btrfs volumes",
    "autopart": "no autopart (what it adds depends on --type)",
    "reqpart": "no reqpart",
    "grow": "'part /' grows to the end of the disk",
    "zerombr": "zerombr, so a blank disk is used without asking",
    "clearpart": "clearpart --all --initlabel",
    "no-poweroff": "the install ends with poweroff/shutdown (not reboot or halt)",
    "rootpw": "a root password is given, or the root account is locked (rootpw --lock)",
    "plaintext-rootpw": "the root password is a crypted hash (rootpw --iscrypted)",
    "rootpw-hash": "the crypted root password is a SHA-256/SHA-512 crypt hash",
    "plaintext-password": "user passwords are crypted hashes",
    "erroronfail": "%pre, %pre-install and %post use --erroronfail",
    "display": "cmdline or text: no display needed",
    "network": "DHCP only",
    "bootloader": "a bootloader is installed (not --location=none, not --disabled)",
    "serial-console": "the installed kernel gets console=ttyS0",
    "ignoremissing": "no %packages --ignoremissing",
    "packages": "the recipe's packages are in %packages and not excluded",
}


def _items(h: Any, command: str, attr: str) -> list[Any]:
    """A command's data list, or [] when this syntax version has no such command (RHEL8+ has no btrfs)."""
    return list(getattr(getattr(h, command, None), attr, None) or [])


def lint_kickstart(text: str, *, syntax: str = "RHEL7", required_packages: Iterable[str] = ()) -> Findings:
    """Parse and check a (shape-normalized) kickstart against the golden-image policy; every finding."""
    from pykickstart.constants import (
        AUTOPART_TYPE_BTRFS,
        AUTOPART_TYPE_LVM,
        AUTOPART_TYPE_LVM_THINP,
        AUTOPART_TYPE_PLAIN,
        CLEARPART_TYPE_ALL,
        DISPLAY_MODE_GRAPHICAL,
        KS_MISSING_IGNORE,
        KS_REBOOT,
        KS_SCRIPT_ONERROR,
        KS_SCRIPT_POST,
        KS_SCRIPT_PRE,
        KS_SCRIPT_PREINSTALL,
        KS_SCRIPT_TRACEBACK,
        KS_SHUTDOWN,
    )

    errors: list[Problem] = []
    for i, line in enumerate(text.split("\n"), 1):
        if re.match(r"^\s*%(include|ksappend)\b", line):
            errors.append(Problem("include", "%include and %ksappend are not allowed: the answer file must "
                                  "be self-contained (it is all the installer gets)", i))
    h, parsed, template_lines = parse_with_templates(text, syntax)
    errors.extend(parsed.errors)

    def err(rule: str, message: str, line: int | None) -> None:
        errors.append(Problem(rule, message, line or None))

    # Storage: exactly one partition, '/', that grows to the disk.
    roots = []
    for pd in _items(h, "partition", "partitions"):
        mp = pd.mountpoint or ""
        if mp == "swap" or (pd.fstype or "") == "swap":
            err("swap", "swap is not allowed: 'part swap' makes a swap partition (golden images have no swap; "
                "a cloud adds swap if it wants it)", pd.lineno)
        elif mp.startswith("pv."):
            err("lvm", f"LVM is not allowed: 'part {mp}' makes an LVM physical volume; use one 'part /'",
                pd.lineno)
        elif mp.startswith("raid."):
            err("raid", f"RAID is not allowed: 'part {mp}' makes a RAID member", pd.lineno)
        elif mp.startswith("btrfs."):
            err("btrfs", f"btrfs volumes are not allowed: 'part {mp}'", pd.lineno)
        elif mp == "/":
            roots.append(pd)
        elif mp in ("biosboot", "/boot/efi", "prepboot", "appleboot"):
            err("extra-partition", f"'part {mp}' adds a platform partition: golden images are MBR disks "
                "with exactly one partition, '/'", pd.lineno)
        else:
            err("mount-point", f"'part {mp}' adds a second mount point: golden images have exactly one "
                "partition, '/'", pd.lineno)
    logvols = _items(h, "logvol", "lvList")
    for lv in logvols:
        if lv.mountpoint == "swap" or (lv.fstype or "") == "swap":
            err("swap", "swap is not allowed: 'logvol swap' makes a swap logical volume", lv.lineno)
        err("lvm", f"LVM is not allowed: 'logvol {lv.mountpoint}' makes a logical volume (use one 'part /')",
            lv.lineno)
        if lv.mountpoint not in ("/", "swap", "none", ""):
            err("mount-point", f"'logvol {lv.mountpoint}' adds a second mount point: golden images have "
                "exactly one, '/'", lv.lineno)
    for vg in _items(h, "volgroup", "vgList"):
        err("lvm", f"LVM is not allowed: 'volgroup {vg.vgname}' makes a volume group", vg.lineno)
    raids = _items(h, "raid", "raidList")
    for rd in raids:
        err("raid", f"RAID is not allowed: 'raid {rd.mountpoint}'", rd.lineno)
    btrfs = _items(h, "btrfs", "btrfsList")
    for bt in btrfs:
        err("btrfs", f"btrfs volumes are not allowed: 'btrfs {bt.mountpoint}'", bt.lineno)
    ap = getattr(h, "autopart", None)
    autopart = bool(ap is not None and ap.autopart)
    if ap is not None and autopart:
        kind = getattr(ap, "type", None)
        if kind == AUTOPART_TYPE_PLAIN:
            what = "plain partitions: /boot, / and /home"
        elif kind == AUTOPART_TYPE_BTRFS:
            what = "btrfs subvolumes for / and /home, and /boot"
            err("btrfs", "autopart --type=btrfs makes btrfs subvolumes", ap.lineno)
        elif kind == AUTOPART_TYPE_LVM_THINP:
            what = "thin-provisioned LVM, /boot and /home"
            err("lvm", "autopart --type=thinp makes thin-provisioned LVM volumes", ap.lineno)
        elif kind in (None, AUTOPART_TYPE_LVM):
            what = "LVM volumes, /boot and /home"
            err("lvm", "autopart makes LVM volumes (its default --type is lvm)", ap.lineno)
        else:
            what = f"its own layout (--type {kind})"
        if not getattr(ap, "noswap", False):
            err("swap", "autopart adds a swap volume (it has no --noswap)", ap.lineno)
        err("autopart", f"autopart is not allowed: here it makes {what}; use one 'part / --grow'", ap.lineno)
    reqpart = getattr(h, "reqpart", None)
    if reqpart is not None and reqpart.reqpart:
        err("reqpart", "reqpart is not allowed: it adds platform partitions (biosboot, /boot/efi) next to /",
            reqpart.lineno)
    if not roots and not autopart:
        elsewhere = ([("logvol /", lv.lineno) for lv in logvols if lv.mountpoint == "/"]
                     + [("raid /", rd.lineno) for rd in raids if rd.mountpoint == "/"]
                     + [("btrfs /", bt.lineno) for bt in btrfs if bt.mountpoint == "/"])
        if elsewhere:
            what, line = elsewhere[0]
            err("no-root", f"'/' is not a plain partition ('{what}' on line {line}): golden images have "
                "'/' on one 'part / --grow'", line)
        else:
            err("no-root", "no partition for '/': add 'part / --grow' (the only partition of a golden image)",
                None)
    for extra in roots[1:]:
        err("mount-point", "'/' is defined more than once: golden images have exactly one partition, '/'",
            extra.lineno)
    if roots and not roots[0].grow:
        err("grow", "'part /' must use --grow so that / fills the disk", roots[0].lineno)
    if not h.zerombr.zerombr:
        err("zerombr", "zerombr is missing: without it the installer stops to ask before using a blank disk",
            None)
    if not (h.clearpart.type == CLEARPART_TYPE_ALL and h.clearpart.initAll):
        err("clearpart", "'clearpart --all --initlabel' is required: the disk must start empty",
            h.clearpart.lineno if h.clearpart.seen else None)

    # The end of the install: the guest must power itself off.
    if not h.reboot.seen:
        err("no-poweroff", "no 'poweroff' (or 'shutdown'): the install must end by powering the guest off",
            None)
    elif h.reboot.action == KS_REBOOT:
        err("no-poweroff", "'reboot' is not allowed: the install must end with 'poweroff' (a reboot would "
            "boot the new system before it is generalized)", h.reboot.lineno)
    elif h.reboot.action != KS_SHUTDOWN:
        err("no-poweroff", "'halt' is not allowed: it waits forever instead of powering off; use "
            "'poweroff'", h.reboot.lineno)

    # Passwords: crypted hashes, or a locked root account.
    rootpw = h.rootpw
    locked = bool(getattr(rootpw, "lock", False))
    if rootpw.lineno in template_lines:
        pass  # the unrendered-template finding says it
    elif not rootpw.seen:
        err("rootpw", "no rootpw: give the root password as 'rootpw --iscrypted <hash>' (or lock the "
            "account with 'rootpw --lock')", None)
    elif rootpw.password and not rootpw.isCrypted:
        err("plaintext-rootpw", "rootpw must be a crypted hash ('rootpw --iscrypted'): a plaintext "
            "password would be kept in the installer's kickstart copies and logs", rootpw.lineno)
    elif rootpw.password and not CRYPT_HASH_RE.match(rootpw.password):
        err("rootpw-hash", "the rootpw --iscrypted value is not a SHA-256/SHA-512 crypt hash "
            "($5$... or $6$...)", rootpw.lineno)
    elif not rootpw.password and not locked:
        err("rootpw", "rootpw gives no password: give 'rootpw --iscrypted <hash>' or 'rootpw --lock'",
            rootpw.lineno)
    for ud in _items(h, "user", "userList"):
        if ud.password and not ud.isCrypted and ud.lineno not in template_lines:
            err("plaintext-password",
                f"user '{ud.name}' has a plaintext password: use --iscrypted with a hash", ud.lineno)

    # Scripts must fail the install when they fail.
    names = {KS_SCRIPT_PRE: "%pre", KS_SCRIPT_POST: "%post", KS_SCRIPT_PREINSTALL: "%pre-install"}
    for script in h.scripts:
        if script.type in (KS_SCRIPT_TRACEBACK, KS_SCRIPT_ONERROR):
            continue
        if not script.errorOnFail and script.lineno is not None:  # no line: its header's error says it
            err("erroronfail", f"{names.get(script.type, '%script')} without --erroronfail: a failing script "
                "would be ignored and a broken image built", script.lineno)

    # Unattended, text-only, DHCP, a bootloader that boots, serial console.
    display = getattr(h, "displaymode", None)
    if display is not None and (display.displayMode is None or display.displayMode == DISPLAY_MODE_GRAPHICAL):
        err("display", "the install must not need a display: add 'cmdline' (or 'text')",
            display.lineno if display.displayMode is not None else None)
    for nd in _items(h, "network", "network"):
        if nd.bootProto and nd.bootProto != "dhcp":
            err("network", f"network --bootproto={nd.bootProto}: golden images get their address by DHCP",
                nd.lineno)
        elif getattr(nd, "ip", None) and nd.lineno not in template_lines:
            err("network", f"network --ip={nd.ip}: golden images get their address by DHCP", nd.lineno)
    bl = h.bootloader
    if bl.seen and getattr(bl, "disabled", False):
        err("bootloader", "bootloader --disabled: no bootloader is installed and the image cannot boot; use "
            "--location=mbr", bl.lineno)
    elif bl.seen and bl.location == "none":
        err("bootloader", "bootloader --location=none: the bootloader is not written to the disk and the image "
            "cannot boot; use --location=mbr", bl.lineno)
    if not bl.seen or not re.search(r"(^|\s)console=ttyS0", bl.appendLine or ""):
        err("serial-console", "the bootloader must put a serial console on the kernel command line: "
            f"bootloader --append=\"console=tty0 console={SERIAL_CONSOLE}\"",
            bl.lineno if bl.seen else None)

    # Packages: what the recipe asks for must be installed, and a missing one must fail the install.
    packages_line = line_of(text, r"^\s*%packages\b")
    if h.packages.handleMissing == KS_MISSING_IGNORE:
        err("ignoremissing", "%packages --ignoremissing would hide a missing package", packages_line)
    wanted = set(h.packages.packageList)
    for pkg in required_packages:
        if pkg in h.packages.excludedList:
            err("packages", f"package '{pkg}' from the recipe is excluded ('-{pkg}') in %packages",
                packages_line)
        elif pkg not in wanted:
            err("packages", f"package '{pkg}' from the recipe is missing from %packages", packages_line)

    errors.sort(key=lambda p: (p.line is None, p.line or 0))
    return Findings(tuple(errors), parsed.warnings)

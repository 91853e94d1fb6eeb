"""Kickstart: parse with pykickstart for a syntax version, then lint against the golden-image policy."""

from __future__ import annotations

import re
import shlex
import warnings
from collections.abc import Iterable
from typing import Any

from .findings import Findings, Problem
from .password import CRYPT_HASH_RE
from .render import SERIAL_CONSOLE

# -- kickstart -------------------------------------------------------------------------------------

def parse_kickstart(text: str, syntax: str = "RHEL7") -> tuple[Any, Findings]:
    """Parse with pykickstart; return (handler or None, findings). Syntax errors name their line."""
    from pykickstart.errors import KickstartDeprecationWarning, KickstartError, KickstartParseWarning
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    class TracingParser(KickstartParser):
        """Remembers the line being handled, so warnings (which carry none) can name it."""
        current = 0

        def handleCommand(self, lineno: int, args: list[str]) -> Any:  # noqa: N802 - pykickstart API
            self.current = lineno
            return super().handleCommand(lineno, args)

    handler = makeVersion(syntax)
    parser = TracingParser(handler, followIncludes=False, missingIncludeIsFatal=False)
    errors: list[Problem] = []
    warned: list[Problem] = []
    caught: list[tuple[Warning | str, type[Warning], int]] = []

    def record(message: Warning | str, category: type[Warning], *_args: Any, **_kw: Any) -> None:
        caught.append((message, category, parser.current))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        try:
            parser.readKickstartFromString(text)
        except KickstartError as exc:
            errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): "
                                  + (str(exc.message).strip() or "cannot parse this line"),
                                  exc.lineno or None))
        except ValueError as exc:  # shlex: unbalanced quotes, raised by pykickstart without a line
            errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): {exc}",
                                  _first_unsplittable_line(text)))
        except Exception as exc:  # noqa: BLE001 - a pykickstart bug on odd input is still a rejection
            errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): pykickstart failed: "
                                  f"{type(exc).__name__}: {exc}", parser.current or None))
    for message, category, line in caught:
        if issubclass(category, KickstartDeprecationWarning):
            warned.append(Problem("deprecated", str(message), line or None))
        elif issubclass(category, KickstartParseWarning):
            errors.append(Problem("parse-warning", str(message), line or None))
    parsed = None if errors and errors[0].rule == "syntax" else handler
    return parsed, Findings(tuple(errors), tuple(warned))


def _first_unsplittable_line(text: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        try:
            shlex.split(line, comments=True)
        except ValueError:
            return i
    return None


def _line_of(text: str, pattern: str) -> int | None:
    rx = re.compile(pattern)
    for i, line in enumerate(text.splitlines(), 1):
        if rx.search(line):
            return i
    return None


# Every rule the lint applies, with what it guards (docs/answer-files.md has the messages).
KICKSTART_RULES = {
    "syntax": "pykickstart parses the file for the target's syntax version (RHEL7 for EL 7)",
    "parse-warning": "pykickstart's warnings (a duplicate definition) are errors",
    "include": "no %include / %ksappend: the file is self-contained",
    "no-root": "there is a 'part /'",
    "mount-point": "'/' is the only mount point, defined once",
    "extra-partition": "no biosboot, /boot/efi or other platform partition",
    "swap": "no swap",
    "lvm": "no LVM (part pv.*, volgroup, logvol)",
    "raid": "no RAID",
    "btrfs": "no btrfs volumes",
    "autopart": "no autopart",
    "reqpart": "no reqpart",
    "grow": "'part /' grows to the end of the disk",
    "zerombr": "zerombr, so a blank disk is used without asking",
    "clearpart": "clearpart --all --initlabel",
    "no-poweroff": "the install ends with poweroff/shutdown (not reboot or halt)",
    "rootpw": "a root password is given",
    "plaintext-rootpw": "the root password is a crypted hash (rootpw --iscrypted)",
    "rootpw-hash": "the crypted root password is a SHA-256/SHA-512 crypt hash",
    "plaintext-password": "user passwords are crypted hashes",
    "erroronfail": "%pre, %pre-install and %post use --erroronfail",
    "display": "cmdline or text: no display needed",
    "network": "DHCP only",
    "bootloader": "a bootloader is installed (not --location=none)",
    "serial-console": "the installed kernel gets console=ttyS0",
    "ignoremissing": "no %packages --ignoremissing",
    "packages": "the recipe's packages are in %packages and not excluded",
}


def lint_kickstart(text: str, *, syntax: str = "RHEL7", required_packages: Iterable[str] = ()) -> Findings:
    """Parse and check a kickstart against the golden-image policy (docs/answer-files.md lists the rules)."""
    from pykickstart.constants import (
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
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*%(include|ksappend)\b", line):
            errors.append(Problem("include", "%include and %ksappend are not allowed: the answer file must "
                                  "be self-contained (it is all the installer gets)", i))
    h, parsed = parse_kickstart(text, syntax)
    errors.extend(parsed.errors)
    if h is None:
        return Findings(tuple(errors), parsed.warnings)

    def err(rule: str, message: str, line: int | None) -> None:
        errors.append(Problem(rule, message, line or None))

    # Storage: exactly one partition, '/', that grows to the disk.
    roots = []
    for pd in h.partition.partitions:
        mp = pd.mountpoint
        if mp == "swap" or (pd.fstype or "") == "swap":
            err("swap", "swap is not allowed: golden images have no swap partition", pd.lineno)
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
    for lv in h.logvol.lvList:
        err("lvm", f"LVM is not allowed: 'logvol {lv.mountpoint}' (use one 'part /')", lv.lineno)
    for vg in h.volgroup.vgList:
        err("lvm", f"LVM is not allowed: 'volgroup {vg.vgname}'", vg.lineno)
    for rd in h.raid.raidList:
        err("raid", f"RAID is not allowed: 'raid {rd.mountpoint}'", rd.lineno)
    for bt in h.btrfs.btrfsList:
        err("btrfs", f"btrfs volumes are not allowed: 'btrfs {bt.mountpoint}'", bt.lineno)
    if h.autopart.autopart:
        err("autopart", "autopart is not allowed: it adds /boot, swap and LVM; use one 'part / --grow'",
            h.autopart.lineno)
    if getattr(h, "reqpart", None) is not None and h.reqpart.reqpart:
        err("reqpart", "reqpart is not allowed: it adds platform partitions (biosboot, /boot/efi) next to /",
            h.reqpart.lineno)
    if not roots and not h.autopart.autopart:
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

    # Passwords: crypted hashes only.
    if not h.rootpw.seen:
        err("rootpw", "no rootpw: give the root password as 'rootpw --iscrypted <hash>'", None)
    elif h.rootpw.password and not h.rootpw.isCrypted:
        err("plaintext-rootpw", "rootpw must be a crypted hash ('rootpw --iscrypted'): a plaintext "
            "password would be kept in the installer's kickstart copies and logs", h.rootpw.lineno)
    elif h.rootpw.password and not CRYPT_HASH_RE.match(h.rootpw.password):
        err("rootpw-hash", "the rootpw --iscrypted value is not a SHA-256/SHA-512 crypt hash "
            "($5$... or $6$...)", h.rootpw.lineno)
    for ud in h.user.userList:
        if ud.password and not ud.isCrypted:
            err("plaintext-password",
                f"user '{ud.name}' has a plaintext password: use --iscrypted with a hash", ud.lineno)

    # Scripts must fail the install when they fail.
    names = {KS_SCRIPT_PRE: "%pre", KS_SCRIPT_POST: "%post", KS_SCRIPT_PREINSTALL: "%pre-install"}
    for script in h.scripts:
        if script.type in (KS_SCRIPT_TRACEBACK, KS_SCRIPT_ONERROR):
            continue
        if not script.errorOnFail:
            err("erroronfail", f"{names.get(script.type, '%script')} without --erroronfail: a failing script "
                "would be ignored and a broken image built", script.lineno)

    # Unattended, text-only, DHCP, serial console.
    if h.displaymode.displayMode is None or h.displaymode.displayMode == DISPLAY_MODE_GRAPHICAL:
        err("display", "the install must not need a display: add 'cmdline' (or 'text')",
            h.displaymode.lineno if h.displaymode.displayMode is not None else None)
    for nd in h.network.network:
        if nd.bootProto and nd.bootProto != "dhcp":
            err("network", f"network --bootproto={nd.bootProto}: golden images get their address by DHCP",
                nd.lineno)
    if h.bootloader.seen and h.bootloader.location == "none":
        err("bootloader", "bootloader --location=none: the image would not boot; use --location=mbr",
            h.bootloader.lineno)
    if not h.bootloader.seen or not re.search(r"(^|\s)console=ttyS0", h.bootloader.appendLine or ""):
        err("serial-console", "the bootloader must put a serial console on the kernel command line: "
            f"bootloader --append=\"console=tty0 console={SERIAL_CONSOLE}\"",
            h.bootloader.lineno if h.bootloader.seen else None)

    # Packages: what the recipe asks for must be installed, and a missing one must fail the install.
    packages_line = _line_of(text, r"^\s*%packages\b")
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



"""Kickstart: parse with pykickstart for any syntax version it knows, then lint against the golden-image
policy (docs/answer-files.md lists the rules).

pykickstart stops at the first fatal error and counts lines its own way, so the parser here feeds it
the file line by line through ``_Lines``, which knows the line an editor would show and repairs what
would stop the parse: a line shlex cannot split is reported and blanked, an unterminated section is
reported at the line that opens it and closed, an ``%include`` is reported and skipped, a line of
template syntax is reported and skipped. Command errors are collected one per line (``_tryFunc``),
and every data object gets the editor's line number. The policy checks then run on whatever could
be read, so one typo never hides a swap partition.
"""

from __future__ import annotations

import re
import shlex
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .findings import Findings, Problem
from .password import CRYPT_HASH_RE
from .render import SERIAL_CONSOLE
from .shape import SHAPE_RULES
from .unrendered import find_leftovers
from .unrendered import message as leftover_message

# pykickstart builds an argparse parser per command (~0.1 ms) and per section header (~0.6 ms): these
# bound the time any 1 MiB input can take (docs/answer-files.md). Real kickstarts have < 300 and < 30.
MAX_COMMANDS = 5000
MAX_SECTIONS = 500
MAX_SYNTAX_ERRORS = 200  # then the rest of the file is not parsed (said in one more finding)
MAX_RESTARTS = 5  # a pykickstart failure outside a command (e.g. in %packages' finalize): blank, restart


class _Lines:
    """The file's lines for pykickstart's state machine (which wants ``next``/``put``), tracking the
    editor's line number of the line it handles (``current``) and repairing what would stop it."""

    def __init__(self, lines: list[str], parser: Any, syntax: str, blank: set[int]) -> None:
        self.lines = lines
        self.parser = parser
        self.syntax = syntax
        self.blank = blank
        self.index = 0
        self.current = 0
        self.errors: list[Problem] = []
        self.template_lines: set[int] = set()
        self.open_line = 0
        self.open_name = ""
        self.eof_sent = False
        self.stopped = 0
        self.statements = {True: 0, False: 0}  # section headers, commands
        self._buf: tuple[str, int] | None = None

    def __iter__(self) -> _Lines:
        return self

    def put(self, s: str) -> None:
        self._buf = (s, self.current)

    def __next__(self) -> str:
        return self.next()

    def _in_section(self) -> bool:
        from pykickstart.parser import STATE_COMMANDS, STATE_END
        return self.parser._state not in (STATE_COMMANDS, STATE_END)

    def next(self) -> str:
        if self._buf is not None:
            line, self.current = self._buf
            self._buf = None
            return line
        if len(self.errors) >= MAX_SYNTAX_ERRORS and self.stopped == 0:
            # Past this many, the file is not a kickstart with typos: stop reading, bound the time.
            self.stopped = self.current
            self.index = len(self.lines)
        if self.index >= len(self.lines):
            if self._in_section() and not self.eof_sent:
                self.eof_sent = True
                if not self.stopped:
                    self._unterminated()
                return "%end\n"
            if self.index == len(self.lines):
                self.index += 1
                return ""  # pykickstart's end-of-file marker
            raise StopIteration
        line = self.lines[self.index]
        self.index += 1
        self.current = self.index
        return self._repair(line)

    def _error(self, message: str) -> None:
        self.errors.append(Problem("syntax", f"kickstart syntax error ({self.syntax}): {message}", self.current))

    def _unterminated(self) -> None:
        """Reported where the section opens: that is the line to fix, not the end of the file."""
        self.errors.append(Problem("syntax", f"kickstart syntax error ({self.syntax}): section {self.open_name} "
                                   f"(opened on line {self.open_line}) does not end with %end", self.open_line))

    def _repair(self, line: str) -> str:
        if self.current in self.blank:
            return "\n"
        stripped = line.strip()
        in_section = self._in_section()
        if left := find_leftovers(line, self.current, in_commands=not in_section):
            self.template_lines.add(self.current)
            self.errors.append(Problem("unrendered-template", leftover_message(left), self.current))
            if not in_section and stripped.startswith(("{", "$", "%")) and not self.parser._validState(
                    stripped.split()[0]):
                return "\n"  # a line of template syntax, not a command: the parser's guess would only add noise
        if not stripped or stripped.startswith("#"):
            return line + "\n"
        first = stripped.split()[0]
        if first in ("%include", "%ksappend"):
            return "\n"  # the include rule reports it; pykickstart would try to read the file
        if not in_section and first == "%end":
            self._error("%end without a section to end")
            return "\n"
        split = not in_section or first == "%end" or self.parser._validState(first)
        if split:
            try:
                args = shlex.split(line, comments=not in_section)
            except ValueError as exc:
                self._error(f"{exc} (unbalanced quotes)")
                return "\n"
            if not args or not args[0]:
                self._error("a command name cannot be empty")
                return "\n"
        if not in_section:
            self.statements[first.startswith("%")] += 1
            if self.statements[True] > MAX_SECTIONS or self.statements[False] > MAX_COMMANDS:
                self.errors.append(Problem("too-large", f"more than {MAX_COMMANDS} commands or {MAX_SECTIONS} "
                                           f"sections: the lines from line {self.current} on were not read",
                                           self.current))
                self.stopped = self.current
                self.index = len(self.lines)
                return "\n"
        if not in_section and first.startswith("%") and first != "%end":
            self.open_line, self.open_name = self.current, first
        elif in_section and first != "%end" and self.parser._validState(first):
            # A new section while one is open: report the open one where it starts, close it, go on.
            self._unterminated()
            self.open_line, self.open_name = self.current, first  # the header comes back through the buffer
            self._buf = (line + "\n", self.current)
            return "%end\n"
        return line + "\n"


def _make_parser(syntax: str) -> tuple[Any, Any]:
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    class TracingParser(KickstartParser):  # type: ignore[misc]
        """Collects every command error instead of stopping, and gives data objects editor line numbers."""
        lines: _Lines

        def handleCommand(self, lineno: int, args: list[str]) -> Any:  # noqa: N802 - pykickstart API
            return super().handleCommand(self.lines.current, args)

        def _tryFunc(self, fn: Callable[[], Any]) -> None:  # noqa: N802 - pykickstart API
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - every command error is a finding, not a stop
                self.lines._error(_error_text(exc))

        def readKickstartFromString(self, s: str, reset: bool = True) -> None:  # noqa: N802
            self._reset()
            self._stateMachine(self.lines)

        def setupSections(self) -> None:  # noqa: N802
            super().setupSections()
            for obj in self._sections.values():
                header = obj.handleHeader
                obj.handleHeader = (lambda h: lambda lineno, args: h(self.lines.current, args))(header)

        def registerSection(self, obj: Any) -> None:  # noqa: N802
            super().registerSection(obj)
            if hasattr(self, "lines"):  # an unknown section's NullSection, made mid-parse
                header = obj.handleHeader
                obj.handleHeader = (lambda h: lambda lineno, args: h(self.lines.current, args))(header)

    handler = makeVersion(syntax)
    parser = TracingParser(handler, followIncludes=False, missingIncludeIsFatal=False,
                           unknownSectionIsFatal=False)
    return handler, parser


def _error_text(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or "").strip()
    if not text:
        text = str(exc).strip()
        text = re.sub(r"^The following problem occurred on line \d+ of the kickstart file:\s*", "", text)
    text = re.sub(r"\s*\n\s*", " ", re.sub(r" (on|at) line \d+", "", text))
    if not text:
        text = "cannot parse this line"
    if not getattr(exc, "lineno", None) and type(exc).__module__.split(".")[0] != "pykickstart":
        text = f"pykickstart failed: {type(exc).__name__}: {text}"
    return text


def parse_kickstart(text: str, syntax: str = "RHEL7") -> tuple[Any, Findings]:
    """Parse with pykickstart; return (handler, findings). Every syntax error is reported, each on its
    own line; the handler holds whatever could be read (never None)."""
    handler, findings, _ = _parse(text, syntax)
    return handler, findings


def _parse(text: str, syntax: str) -> tuple[Any, Findings, frozenset[int]]:
    """``parse_kickstart``, plus the lines that hold template syntax (whose parse is only a guess)."""
    from pykickstart.errors import KickstartDeprecationWarning, KickstartParseWarning

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    blank: set[int] = set()
    fatal: list[Problem] = []
    for _attempt in range(MAX_RESTARTS + 1):
        handler, parser = _make_parser(syntax)
        feed = _Lines(lines, parser, syntax, blank)
        parser.lines = feed
        caught: list[tuple[Warning | str, type[Warning], int]] = []

        def record(message: Warning | str, category: type[Warning], *_a: Any, _feed: _Lines = feed,
                   _caught: list[tuple[Warning | str, type[Warning], int]] = caught, **_kw: Any) -> None:
            _caught.append((message, category, _feed.current))

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            try:
                parser.readKickstartFromString("")
                break
            except Exception as exc:  # noqa: BLE001 - outside a command: report it, skip the line, restart
                line = feed.current or None
                fatal.append(Problem("syntax", f"kickstart syntax error ({syntax}): {_error_text(exc)}", line))
                if line is None or line in blank:
                    break
                blank.add(line)
    else:
        fatal.append(Problem("syntax", f"kickstart syntax error ({syntax}): gave up after {MAX_RESTARTS} "
                             "restarts; the lines after the last one reported were not all checked"))
    errors = feed.errors + fatal
    if feed.stopped and feed.errors[-1].rule != "too-large":
        errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): more than {MAX_SYNTAX_ERRORS} "
                              f"errors; the lines after line {feed.stopped} were not read (is this a kickstart?)",
                              feed.stopped))
    warned: list[Problem] = []
    for message, category, line in caught:
        # pykickstart puts its own line count in some messages; the finding carries the editor's.
        text_ = re.sub(r" (on|at) line \d+", "", str(message))
        if issubclass(category, KickstartParseWarning) and text_.startswith("Potentially unknown section"):
            name = lines[line - 1].split()[0] if line and lines[line - 1].split() else "?"
            errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): Unknown kickstart section: "
                                  f"{name}", line or None))
        elif issubclass(category, KickstartDeprecationWarning):
            warned.append(Problem("deprecated", text_.strip(), line or None))
        elif issubclass(category, KickstartParseWarning):
            errors.append(Problem("parse-warning", text_.strip(), line or None))
    feed_template = feed.template_lines
    # A template line's own parse errors are the parser's guesses about text that is not kickstart.
    errors = [e for e in errors if not (e.line in feed_template and e.rule in ("syntax", "parse-warning"))]
    return handler, Findings(tuple(errors), tuple(warned)), frozenset(feed_template)


def _line_of(text: str, pattern: str) -> int | None:
    rx = re.compile(pattern)
    for i, line in enumerate(text.split("\n"), 1):
        if rx.search(line):
            return i
    return None


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
    h, parsed, template_lines = _parse(text, syntax)
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

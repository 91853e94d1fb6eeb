"""Parsing a kickstart with pykickstart, for any syntax version it knows, without stopping at the first error.

pykickstart stops at the first fatal error and counts lines its own way, so the parser here feeds it
the file line by line through ``_Lines``, which knows the line an editor would show and repairs what
would stop the parse: a line shlex cannot split is reported and blanked, an unterminated section is
reported at the line that opens it and closed, an ``%include`` is reported and skipped, a line of
template syntax is reported and skipped. Command errors are collected one per line (``_tryFunc``),
and every data object gets the editor's line number, so the policy (``policy.py``) runs on whatever
could be read and one typo never hides a swap partition.
"""

from __future__ import annotations

import re
import shlex
import warnings
from collections.abc import Callable
from typing import Any

from ..findings import Findings, Problem
from ..unrendered import find_leftovers
from ..unrendered import message as leftover_message

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
    handler, findings, _ = parse_with_templates(text, syntax)
    return handler, findings


def parse_with_templates(text: str, syntax: str) -> tuple[Any, Findings, frozenset[int]]:
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


def line_of(text: str, pattern: str) -> int | None:
    rx = re.compile(pattern)
    for i, line in enumerate(text.split("\n"), 1):
        if rx.search(line):
            return i
    return None

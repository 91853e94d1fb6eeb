"""The lint engine: any answer file, kickstart or preseed, from raw bytes to every finding with its line.

``lint_file``/``lint_bytes`` are what ``invoke lint FILE`` runs on a file of any origin: the shape is
checked first (size, encoding, line endings: ``shape.py``), the kind and the kickstart syntax are
guessed when not given (and the guess is said), then the parser and the golden-image policy run.
``check_answer_file`` is the same engine on a recipe's rendered file (``invoke validate``, a build),
whose findings are traced back to template lines.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..errors import RecipeError
from .findings import AnswerFileKind, Findings, Problem
from .kickstart import lint_kickstart
from .preseed import PRESEED_TYPES, lint_preseed
from .render import RenderedAnswerFile
from .shape import MAX_BYTES, MAX_FINDINGS_PER_RULE, SHAPE_RULES, shape

DEFAULT_SYNTAX = "RHEL9"  # when a kickstart names none and shows no older command: today's EL
# Rules that hold for any answer file, whatever it is for; ``--policy none`` keeps only these.
SYNTAX_RULES = frozenset(SHAPE_RULES) | {"syntax", "parse-warning", "include"}


class AnswerFileError(RecipeError):
    """The answer file does not parse or breaks the golden-image policy; ``problems`` lists each."""

    def __init__(self, problems: Sequence[Problem], *, name: str,
                 rendered: RenderedAnswerFile | None = None) -> None:
        self.problems = tuple(problems)
        self.rendered_name = name

        def where(line: int | None) -> str:
            if rendered is not None:
                return rendered.where(line)
            return name if line is None else f"{name}:{line}"

        lines = [f"{where(p.line)}: {p.message}" for p in self.problems]
        if rendered is not None:
            head = f"answer file {rendered.name} (rendered from {rendered.template})"
        else:
            head = f"answer file {name}"
        count = len(lines)
        message = (f"{head} has {count} problem{'s' if count != 1 else ''}:\n  " + "\n  ".join(lines))
        first = self.problems[0] if self.problems else None
        origin = rendered.origin(first.line) if rendered is not None and first else None
        # file/line point at the template when we know it (that is what the author edits).
        self.file = origin.template if origin else name
        self.key = None
        self.line = origin.line if origin else (first.line if first else None)
        Exception.__init__(self, message)


class Policy(StrEnum):
    GOLDEN = "golden"  # the golden-image rules (one /, no swap, poweroff, ...)
    NONE = "none"      # syntax, shape and templates only: for answer files that are not golden images


@dataclass(frozen=True)
class LintResult:
    """One file's lint: what it was taken for and why, and every finding."""
    name: str
    kind: AnswerFileKind
    syntax: str                              # pykickstart version, or "preseed"
    findings: Findings
    guesses: tuple[str, ...] = field(default=())  # how kind and syntax were guessed, for people


@functools.cache
def known_syntaxes() -> tuple[str, ...]:
    """Every syntax version the installed pykickstart has a handler for. Its version map also names
    versions without one (DEVEL and the newest Fedora in pykickstart 3.6x), which are left out."""
    from pykickstart.version import makeVersion, versionMap
    usable = []
    for name in sorted(versionMap):
        if name == "DEVEL":
            continue  # an alias of the newest Fedora, whatever that is: never a file's real target
        try:
            makeVersion(name)
        except Exception:  # noqa: BLE001 - KickstartVersionError, or an import error inside pykickstart
            continue
        usable.append(name)
    return tuple(usable)


def check_syntax(syntax: str) -> str:
    """The pykickstart version name for ``syntax`` (any case), or a ``RecipeError`` listing the known."""
    name = syntax.upper()
    if name not in known_syntaxes():
        raise RecipeError(f"pykickstart has no kickstart syntax '{syntax}' (it knows: "
                          + ", ".join(known_syntaxes()) + ")", key="--syntax")
    return name


_PRESEED_LINE_RE = re.compile(r"^\s*[a-z0-9-]+\s+\S+/\S+\s+(" + "|".join(sorted(PRESEED_TYPES)) + r")\b")
_KS_VERSION_RE = re.compile(r"^\s*#\s*version\s*=\s*(\S+)", re.M | re.I)


def guess_kind(name: str, text: str) -> tuple[AnswerFileKind, str]:
    """By the file name first (``*.ks``, ``*preseed*``/``*.seed``), else by the content."""
    base = Path(name).name.lower()
    if base.endswith(".ks") or base.endswith(".ks.cfg") or base.startswith(("ks.", "anaconda-ks")):
        return AnswerFileKind.KICKSTART, f"kickstart, from the file name '{base}'"
    if "preseed" in base or base.endswith(".seed"):
        return AnswerFileKind.PRESEED, f"preseed, from the file name '{base}'"
    lines = [ln for ln in text.split("\n") if ln.strip() and not ln.lstrip().startswith("#")]
    debconf = sum(1 for ln in lines if _PRESEED_LINE_RE.match(ln))
    if lines and debconf * 2 >= len(lines):
        return AnswerFileKind.PRESEED, (f"preseed, from the content: {debconf} of {len(lines)} lines are "
                                        "'owner question type value'")
    return AnswerFileKind.KICKSTART, (f"kickstart, from the content: {debconf} of {len(lines)} lines are "
                                      "debconf 'owner question type value'")


def guess_syntax(text: str) -> tuple[str, str]:
    """The ``#version=`` line anaconda writes, else RHEL7 if an EL7-only command is used, else RHEL9."""
    if m := _KS_VERSION_RE.search(text):
        name = m.group(1).upper()
        if name in known_syntaxes():
            return name, f"syntax {name}, from the file's '#version={m.group(1)}' line"
    for pattern, what in ((r"^\s*install\s*$", "'install'"), (r"^\s*(auth|authconfig)\s", "'auth'"),
                          (r"^\s*%packages\b.*--nobase", "'%packages --nobase'")):
        if re.search(pattern, text, re.M):
            return "RHEL7", f"syntax RHEL7, because the file uses {what} (removed after EL7); give --syntax"
    return DEFAULT_SYNTAX, f"syntax {DEFAULT_SYNTAX} (the default: no '#version=' line); give --syntax"


def _select(findings: Findings, policy: Policy) -> Findings:
    if policy is Policy.GOLDEN:
        return findings
    return Findings(tuple(e for e in findings.errors if e.rule in SYNTAX_RULES), findings.warnings)


def lint_text(text: str | bytes, kind: AnswerFileKind, *, syntax: str = "RHEL7",
              required_packages: Iterable[str] = (), policy: Policy = Policy.GOLDEN) -> Findings:
    """Every finding of one answer file (str or raw bytes), sorted by line; never raises on content."""
    shaped = shape(text)
    if shaped.refused:
        return Findings(shaped.errors)
    if kind is AnswerFileKind.KICKSTART:
        found = lint_kickstart(shaped.text, syntax=syntax, required_packages=required_packages)
    else:
        found = lint_preseed(shaped.text, required_packages=required_packages)
    errors = sorted(shaped.errors + found.errors, key=lambda p: (p.line is None, p.line or 0))
    return _select(Findings(_cap(errors), _cap(list(found.warnings))), policy)


def _cap(problems: list[Problem]) -> tuple[Problem, ...]:
    """At most ``MAX_FINDINGS_PER_RULE`` findings of one rule, then one line saying how many more."""
    kept: list[Problem] = []
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.rule] = counts.get(p.rule, 0) + 1
        if counts[p.rule] <= MAX_FINDINGS_PER_RULE:
            kept.append(p)
    for rule, n in counts.items():
        if n > MAX_FINDINGS_PER_RULE:
            kept.append(Problem(rule, f"... and {n - MAX_FINDINGS_PER_RULE} more '{rule}' findings (not listed)"))
    return tuple(kept)


def lint_bytes(data: bytes, name: str, *, kind: AnswerFileKind | None = None, syntax: str | None = None,
               policy: Policy = Policy.GOLDEN) -> LintResult:
    """``invoke lint`` on one file's bytes: kind and syntax guessed unless given."""
    guesses: list[str] = []
    probe = data[:MAX_BYTES].decode("utf-8", "replace")
    if kind is None:
        kind, why = guess_kind(name, probe)
        guesses.append(why)
    if kind is AnswerFileKind.PRESEED:
        syntax = "preseed"
    elif syntax is None:
        syntax, why = guess_syntax(probe)
        guesses.append(why)
    else:
        syntax = check_syntax(syntax)
    findings = lint_text(data, kind, syntax=syntax, policy=policy)
    return LintResult(name, kind, syntax, findings, tuple(guesses))


def lint_file(path: Path | str, *, kind: AnswerFileKind | None = None, syntax: str | None = None,
              policy: Policy = Policy.GOLDEN) -> LintResult:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # a larger file is refused without reading the rest
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror}", file=path) from None
    return lint_bytes(data, str(path), kind=kind, syntax=syntax, policy=policy)


def check_answer_file(rendered: RenderedAnswerFile, *, required_packages: Iterable[str] = ()
                      ) -> tuple[Problem, ...]:
    """Raise ``AnswerFileError`` listing every problem; return the warnings."""
    findings = lint_text(rendered.text, rendered.kind, syntax=rendered.syntax,
                         required_packages=required_packages)
    if findings.errors:
        raise AnswerFileError(findings.errors, name=rendered.name, rendered=rendered)
    return findings.warnings

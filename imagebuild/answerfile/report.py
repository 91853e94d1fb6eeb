"""Lint results for people (text), for scripts (JSON lines, one object per finding) and for code
scanning (SARIF 2.1.0, which GitHub's upload-sarif action accepts: rule ids, levels, file and line).

SARIF reference: https://docs.oasis-open.org/sarif/sarif/v2.1.0/sarif-v2.1.0.html and GitHub's subset,
https://docs.github.com/en/code-security/code-scanning/integrating-with-code-scanning/sarif-support-for-code-scanning
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from .findings import AnswerFileKind, Problem
from .kickstart import KICKSTART_RULES
from .lint import LintResult
from .preseed import PRESEED_RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/imagebuild/imagebuild/blob/main/docs/answer-files.md"


class Format(StrEnum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


def _rows(result: LintResult) -> list[tuple[str, Problem]]:
    return [("error", p) for p in result.findings.errors] + [("warning", p) for p in result.findings.warnings]


def format_text(results: Sequence[LintResult]) -> str:
    out: list[str] = []
    for r in results:
        for why in r.guesses:
            out.append(f"{r.name}: note: taken as {why}")
        for level, p in sorted(_rows(r), key=lambda lp: (lp[1].line or 0, lp[0])):
            where = f"{r.name}:{p.line}" if p.line else r.name
            out.append(f"{where}: {level} [{p.rule}]: {p.message}")
        n_err, n_warn = len(r.findings.errors), len(r.findings.warnings)
        status = "ok" if not n_err else f"{n_err} error{'s' if n_err != 1 else ''}"
        out.append(f"{r.name}: {status}, {n_warn} warning{'s' if n_warn != 1 else ''} "
                   f"({r.kind}, {r.syntax})")
    return "\n".join(out) + "\n"


def format_json(results: Sequence[LintResult]) -> str:
    """JSON lines: one object per finding (no finding, no line)."""
    lines = []
    for r in results:
        for level, p in _rows(r):
            lines.append(json.dumps({"file": r.name, "line": p.line, "level": level, "rule": p.rule,
                                     "message": p.message, "kind": str(r.kind), "syntax": r.syntax},
                                    sort_keys=True))
    return "".join(line + "\n" for line in lines)


def _rule_text(rule: str, kind: AnswerFileKind) -> str:
    rules = KICKSTART_RULES if kind is AnswerFileKind.KICKSTART else PRESEED_RULES
    return rules.get(rule) or {"deprecated": "pykickstart says the option or command is deprecated",
                               "duplicate": "a question is preseeded once"}.get(rule, rule)


def _uri(name: str) -> str:
    path = Path(name)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.resolve().as_uri()


def to_sarif(results: Sequence[LintResult], *, version: str = "0.1.0") -> dict[str, Any]:
    rule_ids: list[str] = []
    rules: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for r in results:
        for level, p in _rows(r):
            rid = f"{r.kind}/{p.rule}"
            if rid not in rule_ids:
                rule_ids.append(rid)
                rules.append({"id": rid, "name": p.rule,
                              "shortDescription": {"text": _rule_text(p.rule, r.kind)},
                              "helpUri": INFORMATION_URI,
                              "defaultConfiguration": {"level": level}})
            # GitHub wants a line on every result: a finding about the whole file points at line 1.
            region = {"startLine": p.line or 1}
            out.append({"ruleId": rid, "ruleIndex": rule_ids.index(rid), "level": level,
                        "message": {"text": p.message if p.line else f"(whole file) {p.message}"},
                        "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(r.name)},
                                                            "region": region}}]})
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "imagebuild-lint", "version": version,
                                          "informationUri": INFORMATION_URI, "rules": rules}},
                      "results": out}]}


def format_sarif(results: Sequence[LintResult]) -> str:
    return json.dumps(to_sarif(results), indent=2) + "\n"


def render(results: Sequence[LintResult], fmt: Format) -> str:
    return {Format.TEXT: format_text, Format.JSON: format_json, Format.SARIF: format_sarif}[fmt](results)

"""The lint engine: one entry point for any answer-file text, kickstart or preseed."""

from __future__ import annotations

from collections.abc import Iterable

from .findings import AnswerFileError, AnswerFileKind, Findings, Problem
from .kickstart import lint_kickstart
from .preseed import lint_preseed
from .render import RenderedAnswerFile


def lint_text(text: str, kind: AnswerFileKind, *, syntax: str = "RHEL7",
              required_packages: Iterable[str] = ()) -> Findings:
    if kind is AnswerFileKind.KICKSTART:
        return lint_kickstart(text, syntax=syntax, required_packages=required_packages)
    return lint_preseed(text, required_packages=required_packages)


def check_answer_file(rendered: RenderedAnswerFile, *, required_packages: Iterable[str] = ()
                      ) -> tuple[Problem, ...]:
    """Raise ``AnswerFileError`` listing every problem; return the warnings."""
    findings = lint_text(rendered.text, rendered.kind, syntax=rendered.syntax,
                         required_packages=required_packages)
    if findings.errors:
        raise AnswerFileError(findings.errors, name=rendered.name, rendered=rendered)
    return findings.warnings



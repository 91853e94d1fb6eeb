"""What a lint says: one ``Problem`` per finding (a stable rule id, a message, a line), collected in
``Findings`` (``lint.AnswerFileError`` carries every error of one file at once, so a typo never hides the
rest)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AnswerFileKind(StrEnum):
    KICKSTART = "kickstart"  # anaconda (EL)
    PRESEED = "preseed"      # debian-installer


ANSWER_FILE_NAME = {AnswerFileKind.KICKSTART: "ks.cfg", AnswerFileKind.PRESEED: "preseed.cfg"}


@dataclass(frozen=True)
class Problem:
    """One finding: ``rule`` is a stable kebab-case id, ``line`` a line of the rendered file."""
    rule: str
    message: str
    line: int | None = None


@dataclass(frozen=True)
class Findings:
    errors: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()

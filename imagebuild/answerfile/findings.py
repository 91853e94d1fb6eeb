"""What a lint says: one ``Problem`` per finding (a stable rule id, a message, a line), collected in
``Findings``; ``AnswerFileError`` carries every error of one file at once, so a typo never hides the
rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from ..errors import RecipeError

if TYPE_CHECKING:
    from .render import RenderedAnswerFile


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


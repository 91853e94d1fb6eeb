"""Kickstart: parse with pykickstart for any syntax version it knows, then lint against the golden-image
policy (docs/answer-files.md lists the rules).

- ``parse.py``: pykickstart fed line by line, every syntax error reported at the editor's line
- ``policy.py``: ``KICKSTART_RULES`` and ``lint_kickstart``, the golden-image rules over the parse
"""

from __future__ import annotations

from .parse import MAX_COMMANDS, MAX_RESTARTS, MAX_SECTIONS, MAX_SYNTAX_ERRORS, parse_kickstart
from .policy import KICKSTART_RULES, lint_kickstart

__all__ = ["KICKSTART_RULES", "MAX_COMMANDS", "MAX_RESTARTS", "MAX_SECTIONS", "MAX_SYNTAX_ERRORS", "lint_kickstart",
           "parse_kickstart"]

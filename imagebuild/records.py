"""The rules every registered record follows (customize steps, boot-test checks): a kebab-case name,
registered once, with a one-line summary. Broken at import, so a bad record never reaches a build."""

from __future__ import annotations

import re
from collections.abc import Mapping

RECORD_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def check_record(what: str, name: str, summary: str, registry: Mapping[str, object]) -> None:
    """ValueError naming ``what`` ("customize step", "boot-test check") and the rule ``name`` breaks."""
    if not RECORD_NAME.match(name):
        raise ValueError(f"{what} name {name!r} is not kebab-case")
    if name in registry:
        raise ValueError(f"{what} {name!r} registered twice")
    if not summary or "\n" in summary:
        raise ValueError(f"{what} {name!r} needs a one-line summary")

"""One copy of an artifact per store, however many publishes run at once: a survey of what the store holds,
another publish's unfinished upload waited for (or, once its publisher is gone, taken for a leftover),
and a random pause after stepping back for one that started no later."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PublishError
from ..events import Reporter
from ..procs import token_alive

RIVAL_POLL_SECONDS = 3.0  # how often a publish looks again at another one's upload of the same artifact


def rival_at_work(token: str, started: float, stale_minutes: int, status: str) -> tuple[bool, str]:
    """Is an unfinished upload of our artifact, made by the publish ``token`` (a process token) that
    started at ``started`` (epoch seconds), still at work? ``(False, why)`` makes it a leftover.

    This host can tell whether its own processes run; another host's upload is presumed at work
    until it is ``stale_minutes`` old."""
    alive = token_alive(token)
    if alive is None and token:
        age_min = (time.time() - started) / 60
        if age_min < stale_minutes:
            return True, ""
        return False, f"left {status} by {token} {age_min:.0f} min ago, past stale_upload_minutes = {stale_minutes}"
    if alive:
        return True, ""
    return False, f"left {status} by a publish that is gone ({token or 'no uploader recorded'})"


@dataclass(frozen=True)
class Rival:
    """Another publish's unfinished upload of the same artifact."""
    id: str
    uploader: str        # its process token, or "" if it recorded none
    status: str
    started: float       # when its record was created (epoch seconds)


@dataclass
class Survey:
    """What a store holds of one artifact, once leftovers and bad copies are removed."""
    existing: Any = None                                # the finished copy (it has an ``id``), if any
    rivals: list[Rival] = field(default_factory=list)   # uploads other publishes have at work

    def started_no_later(self, started: float) -> str:
        """The id of a copy begun no later than ``started`` (ours then steps back), or "". A tie counts:
        both step back and retry after a random pause, since store clocks have coarse steps."""
        if self.existing is not None:
            return str(self.existing.id)
        return next((r.id for r in self.rivals if r.started <= started), "")


def find_or_upload(survey: Callable[[], Survey], upload: Callable[[], Any], *,
                   what: str, timeout: float, reporter: Reporter) -> tuple[Any, bool]:
    """The one copy of an artifact in a store: ``(found, False)`` or ``(upload(), True)``.

    ``survey`` returns the finished copy (or None) and the uploads other publishes have at work;
    ``upload`` returns None when it stepped back for a publish that started no later. While another
    publish is uploading the artifact, wait for it (at most ``timeout`` seconds), then look again."""
    deadline = time.monotonic() + timeout
    waited_for: set[str] = set()
    while True:
        found = survey()
        existing, rivals = found.existing, found.rivals
        if existing is not None:
            return existing, False
        if not rivals:
            done = upload()
            if done is not None:
                return done, True
            continue  # another publish of this artifact started first: wait for it
        for rival in rivals:
            if rival.id not in waited_for:
                waited_for.add(rival.id)
                reporter.info(f"another publish ({rival.uploader or 'unknown'}) is uploading this artifact "
                              f"as {what} {rival.id} ('{rival.status}'); waiting for it")
        if time.monotonic() >= deadline:
            raise PublishError(f"another publish of this artifact is still uploading it after {timeout:.0f}s "
                               f"({what} {rivals[0].id}); try again later, or delete it if its publisher "
                               "is gone")
        time.sleep(RIVAL_POLL_SECONDS)


def yield_pause() -> None:
    """After stepping back for a publish that started no later: a random pause, so two that started
    in the same clock step do not collide again."""
    time.sleep(random.uniform(0.5, RIVAL_POLL_SECONDS))

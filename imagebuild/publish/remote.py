"""Talking to a store safely: a half-made remote object removed with signals held (a second Ctrl-C must not
cut the cleanup short), polling with backoff, and SDK errors told in one line without request bodies."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from ..errors import ImageBuildError, PublishError


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up a half-made remote object; deliver them afterwards.

    Without this, a second Ctrl-C during the delete of a half-uploaded image would leave it behind.
    Only the main thread can block signals for the process's Python handlers; elsewhere it is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def undo_upload(exc: BaseException, undo: Callable[[], None], failed: str) -> NoReturn:
    """After an upload failed or was interrupted by ``exc``: run ``undo`` (remove what the store holds
    of it) with signals held, so a second Ctrl-C cannot cut it short; then raise. Our own errors and
    interrupts go on as they are; anything else becomes a PublishError saying ``failed``."""
    with signals_deferred():
        undo()
    if isinstance(exc, ImageBuildError) or not isinstance(exc, Exception):
        raise exc
    raise PublishError(f"{failed}: {describe_exception(exc)}") from None


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5,
               max_interval: float = 5.0) -> Any:
    """Poll ``check`` (returns a truthy value when done, raises to fail) with backoff, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise PublishError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def describe_exception(exc: BaseException) -> str:
    """One line for an SDK error, without request bodies (which could hold credentials)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}"

"""Progress for people (nested, timed steps) and a JSON-lines event stream for machines.

One ``Reporter`` per build; its nesting depth lives on the instance, not in a global.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class Reporter:
    def __init__(self, stream: IO[str] | None = None, *, verbose: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.verbose = verbose
        self._depth = 0
        self._log: IO[str] | None = None
        self._events: IO[str] | None = None
        self._lock = threading.Lock()
        self.stage_seconds: dict[str, float] = {}

    # -- sinks -------------------------------------------------------------------------------
    def attach(self, log_path: Path, events_path: Path | None = None) -> None:
        """Start writing the build log (and the event stream) once the work dir exists."""
        self._log = open(log_path, "a", encoding="utf-8", buffering=1)
        if events_path is not None:
            self._events = open(events_path, "a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        for f in (self._log, self._events):
            if f is not None:
                f.close()
        self._log = self._events = None

    # -- output ------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        """A line for people (indented by step depth); also goes to the build log."""
        line = "  " * self._depth + message
        with self._lock:
            print(line, file=self.stream, flush=True)
            if self._log is not None:
                self._log.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def log(self, message: str) -> None:
        """A line for the build log only (and the terminal with --verbose)."""
        with self._lock:
            if self._log is not None:
                self._log.write(f"{time.strftime('%H:%M:%S')} {message}\n")
            if self.verbose:
                print("  " * self._depth + "| " + message, file=self.stream, flush=True)

    def event(self, kind: str, **data: Any) -> None:
        record = {"time": round(time.time(), 3), "type": kind, **data}
        with self._lock:
            if self._events is not None:
                self._events.write(json.dumps(record, sort_keys=True) + "\n")

    @contextmanager
    def step(self, name: str, *, stage: bool = False) -> Iterator[None]:
        """A nested, timed step. ``stage=True`` records the wall time for the manifest."""
        self.info(f"▶ {name}")
        self.event("step", name=name, state="start")
        start = time.monotonic()
        self._depth += 1
        try:
            yield
        except BaseException as exc:
            self._depth -= 1
            elapsed = time.monotonic() - start
            self.info(f"✗ {name} failed after {elapsed:.1f}s")
            self.event("step", name=name, state="failed", seconds=round(elapsed, 2),
                       error=f"{type(exc).__name__}: {exc}")
            if stage:
                self.stage_seconds[name] = round(elapsed, 2)
            raise
        self._depth -= 1
        elapsed = time.monotonic() - start
        if stage:
            self.stage_seconds[name] = round(elapsed, 2)
        self.info(f"✓ {name} ({elapsed:.1f}s)")
        self.event("step", name=name, state="done", seconds=round(elapsed, 2))


class CellReporter(Reporter):
    """What one of several things running at once reports through a shared ``Reporter``: every line
    tagged ``[tag]``, its steps timed but never nesting the parent's (whose depth another thread may be
    reading)."""

    def __init__(self, parent: Reporter, tag: str) -> None:
        super().__init__(parent.stream, verbose=parent.verbose)
        self.parent, self.tag = parent, tag

    def info(self, message: str) -> None:
        self.parent.info(f"[{self.tag}] {message}")

    def log(self, message: str) -> None:
        self.parent.log(f"[{self.tag}] {message}")

    def event(self, kind: str, **data: Any) -> None:
        self.parent.event(kind, tag=self.tag, **data)

    @contextmanager
    def step(self, name: str, *, stage: bool = False) -> Iterator[None]:
        self.info(f"▶ {name}")
        self.event("step", name=name, state="start")
        start = time.monotonic()
        try:
            yield
        except BaseException as exc:
            elapsed = time.monotonic() - start
            self.info(f"✗ {name} failed after {elapsed:.1f}s")
            self.event("step", name=name, state="failed", seconds=round(elapsed, 2),
                       error=f"{type(exc).__name__}: {exc}")
            raise
        elapsed = time.monotonic() - start
        self.info(f"✓ {name} ({elapsed:.1f}s)")
        self.event("step", name=name, state="done", seconds=round(elapsed, 2))


class _Null:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass


NULL_REPORTER = Reporter(stream=_Null())  # type: ignore[arg-type]

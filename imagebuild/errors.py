"""Typed errors. Library code raises these; only ``tasks.py`` turns them into exit codes."""

from __future__ import annotations

import signal
from pathlib import Path


class ImageBuildError(Exception):
    """Base of every error imagebuild raises on purpose."""

    exit_code = 1


class RecipeError(ImageBuildError):
    """A recipe (or answer file) is malformed or breaks a rule; names the file and the key or line."""

    exit_code = 2

    def __init__(self, message: str, *, file: Path | str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        where = []
        if self.file:
            where.append(self.file + (f":{line}" if line is not None else ""))
        if key:
            where.append(f"key '{key}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RecipeErrors(RecipeError):
    """Several mistakes in one recipe, reported together (one run shows them all, as the answer-file
    lint does). ``errors`` holds each ``RecipeError``, with its own file and key; ``file``/``key`` are
    the first one's, so callers that look at one error still get a real location."""

    def __init__(self, errors: list[RecipeError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        self.file, self.key, self.line = first.file, first.key, first.line
        lines = "\n  ".join(str(e) for e in self.errors)
        Exception.__init__(self, f"the recipe has {len(self.errors)} problems:\n  {lines}")


def raise_all(errors: list[RecipeError]) -> None:
    """Raise nothing, the one error, or all of them as one ``RecipeErrors``."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise RecipeErrors(errors)


class ToolMissing(ImageBuildError):
    """A host tool the build needs is not installed."""

    exit_code = 3


class PreflightError(ImageBuildError):
    """The host cannot run this build (free space, services, permissions)."""

    exit_code = 3


class CommandFailed(ImageBuildError):
    """An external command exited non-zero, was killed, or timed out."""

    exit_code = 4

    def __init__(self, message: str, *, argv: list[str] | None = None, returncode: int | None = None,
                 stderr_tail: str = "") -> None:
        self.argv = argv or []
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__(message)


class InstallFailed(ImageBuildError):
    """The installer did not produce a complete disk."""

    exit_code = 5


class CustomizeFailed(ImageBuildError):
    """A generalization step failed, or the post-check still found host identity."""

    exit_code = 6


class BootTestFailed(ImageBuildError):
    """The image did not boot, or a check inside the guest failed (in one or more cells)."""

    exit_code = 7

    def __init__(self, message: str, *, result: object = None) -> None:
        self.result = result            # the BootTestResult of a whole matrix, when there is one
        super().__init__(message)


class PublishError(ImageBuildError):
    """Uploading to an image store failed; nothing half-uploaded is left behind."""

    exit_code = 8


class BuildInterrupted(ImageBuildError):
    """SIGINT or SIGTERM arrived; everything the build owned has been released."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; cleaned up")

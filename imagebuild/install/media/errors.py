"""The errors of install media: every one is an ``InstallFailed`` (exit code at the edge, ``tasks.py``)."""

from __future__ import annotations

from ...errors import InstallFailed


class MediaError(InstallFailed):
    """Install media could not be fetched, or is not what the recipe pins."""


class SignatureError(MediaError):
    """A signed index (Debian's InRelease) did not verify against the keyring."""


class ChecksumMismatch(MediaError):
    """A file's sha256 is not the pinned one (the partial download has been deleted)."""

"""Where imagebuild keeps what outlives a build on this host."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .settings import Settings, current


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$IMAGEBUILD_CACHE``, else ``$XDG_CACHE_HOME/imagebuild``, else ``~/.cache/imagebuild``:
    downloaded media, the apt package cache, the KVM probe's answer, the publish tests' server venvs."""
    return (Settings.from_environ(environ) if environ is not None else current()).cache

"""Where imagebuild keeps what outlives a build on this host."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$IMAGEBUILD_CACHE``, else ``$XDG_CACHE_HOME/imagebuild``, else ``~/.cache/imagebuild``:
    downloaded media, the apt package cache, the KVM probe's answer, the publish tests' server venvs."""
    env = os.environ if environ is None else environ
    if env.get("IMAGEBUILD_CACHE"):
        return Path(env["IMAGEBUILD_CACHE"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "imagebuild"

"""The site's mirror map: URL prefixes rewritten so a site can serve install media from its own mirror.

Applied to install trees, ISOs and URL variables of answer files. Pins still apply, so a mirror can
serve the media but not change it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import RecipeError
from .settings import current  # the environment is read once, at the edge


def site_mirrors(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The site's mirror map from ``IMAGEBUILD_MIRRORS``: ``FROM=TO`` URL prefix pairs, space-separated.

    e.g. ``IMAGEBUILD_MIRRORS="http://vault.centos.org/=http://mirror.example/centos-vault/"``. Applied
    to the install tree and to URL variables of the answer file; the media pins still apply, so a mirror
    can serve the media but not change it.
    """
    value = current().mirrors if environ is None else environ.get("IMAGEBUILD_MIRRORS", "")
    mirrors: dict[str, str] = {}
    for pair in value.split():
        src, sep, dst = pair.partition("=")
        if not sep or not re.match(r"^(https?|ftp|file)://", src) or not re.match(r"^(https?|file)://", dst):
            raise RecipeError(f"IMAGEBUILD_MIRRORS: '{pair}' is not FROM_URL=TO_URL",
                              key="IMAGEBUILD_MIRRORS")
        mirrors[src] = dst
    return mirrors


def resolve_mirrors(mirrors: Mapping[str, str] | None) -> Mapping[str, str]:
    """``None`` means the site's map (``IMAGEBUILD_MIRRORS``); pass ``{}`` for none."""
    return site_mirrors() if mirrors is None else mirrors


def rewrite_url(url: str, mirrors: Mapping[str, str] | None) -> str:
    """Apply a mirror map (longest matching prefix wins); ``None`` means the site's map."""
    mirrors = resolve_mirrors(mirrors)
    for prefix in sorted(mirrors, key=len, reverse=True):
        if url.startswith(prefix):
            return mirrors[prefix] + url[len(prefix):]
    return url


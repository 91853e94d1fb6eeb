"""Recipe preflight against the archive: before mmdebstrap starts, check that the mirror answers, that
every suite the build's sources name exists and is signed, and that every package the recipe asks for
exists for the architecture.

Without it a typo in ``packages.extra`` surfaces 1-10 s into the build as ``command failed with exit
code 25: unshare --mount ... mmdebstrap ...`` (a 300-character argv); with it the build stops at once
with ``recipes/x.toml, key 'packages.extra[0]': package 'vmi' does not exist in bookworm ... (did you
mean 'vim'?)``.

The chain of trust is apt's: ``dists/SUITE/InRelease`` verified with gpgv (``install/media/signature.py``'s
``gpgv_verify``, the same code the VM path uses), then each component's ``Packages.xz`` (or ``.gz``)
held to the sha256 that InRelease lists. Those indexes are cached content-addressed by that sha256
(``preflight/`` under :func:`imagebuild.paths.cache_root`, through ``media.fetch``), so a second run
downloads only the InRelease files (~100 KiB each). docs/answer-files.md has the measured cost.
"""

from __future__ import annotations

import difflib
import gzip
import lzma
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .disklayout import BOOT_PACKAGES  # the boot loader packages image.firmware brings in
from .errors import RecipeError, raise_all
from .events import NULL_REPORTER, Reporter
from .install.media import DEBIAN_KEYRING, MediaError, fetch, fetch_bytes, gpgv_verify, release_sha256
from .paths import cache_root
from .recipe import PROJECT_ROOT, Backend, Recipe

ARCH = "amd64"
MAX_INRELEASE_BYTES = 4 << 20  # Debian's InRelease is ~150 KiB; Ubuntu's ~300 KiB


@dataclass(frozen=True)
class SuiteIndex:
    mirror: str
    suite: str
    key: str                                    # the recipe key that names this mirror
    signed_by: str = ""
    packages: frozenset[str] = field(default=frozenset(), repr=False)  # names and what they Provide
    downloaded: int = 0                         # bytes fetched now (0 when the indexes were cached)


@dataclass(frozen=True)
class PreflightReport:
    suites: tuple[SuiteIndex, ...]
    checked: int                                # packages checked
    seconds: float


def _file_setting(recipe: Recipe, key: str) -> str | None:
    """The recipe file (child first) that sets ``key`` (e.g. ``packages.extra``), else the leaf."""
    for src in recipe.sources:
        path = Path(src) if Path(src).is_absolute() else PROJECT_ROOT / src
        try:
            data: Any = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        for part in key.split("."):
            data = data.get(part) if isinstance(data, dict) else None
        if data is not None:
            return src
    return recipe.sources[0] if recipe.sources else None


def suites_of(recipe: Recipe) -> list[tuple[str, str, str]]:
    """(mirror, suite, recipe key) for each line of the build's sources (``bootstrap.sources_list``)."""
    b = recipe.install.bootstrap
    out = [(b.mirror, b.suite, "install.bootstrap.mirror"),
           (b.mirror, f"{b.suite}-updates", "install.bootstrap.mirror")]
    if b.security_mirror:
        out.append((b.security_mirror, f"{b.suite}-security", "install.bootstrap.security_mirror"))
    return out


def parse_packages(data: bytes) -> set[str]:
    """Package names and the virtual names they ``Provides:`` in a Packages index."""
    names: set[str] = set()
    for line in data.split(b"\n"):
        if line.startswith(b"Package: "):
            names.add(line[9:].strip().decode("utf-8", "replace"))
        elif line.startswith(b"Provides: "):
            for item in line[10:].decode("utf-8", "replace").split(","):
                name = item.strip().split(" ")[0]
                if name:
                    names.add(name)
    return names


def fetch_suite(mirror: str, suite: str, key: str, components: Iterable[str], *, recipe: Recipe,
                keyring: str = DEBIAN_KEYRING, cache_dir: Path | None = None,
                reporter: Reporter = NULL_REPORTER, timeout: float = 30.0) -> SuiteIndex:
    """One suite's signed package list; ``RecipeError`` naming ``key`` when the suite or mirror fails."""
    base = mirror.rstrip("/") + f"/dists/{suite}/"
    file = _file_setting(recipe, key)
    try:
        signed = fetch_bytes(base + "InRelease", timeout=timeout, max_bytes=MAX_INRELEASE_BYTES)
    except MediaError as exc:
        text = str(exc)
        if "HTTP 404" in text:
            skey = "install.bootstrap.suite"
            raise RecipeError(f"suite '{suite}' does not exist on {mirror} ({base}InRelease: HTTP 404)",
                              file=_file_setting(recipe, skey), key=skey) from None
        raise RecipeError(f"the mirror does not answer: {text}", file=file, key=key) from None
    release, signers = gpgv_verify(signed, keyring, reporter=reporter, what=f"{base}InRelease")
    listed = release_sha256(release)
    names: set[str] = set()
    downloaded = 0
    root = cache_dir if cache_dir is not None else cache_root() / "preflight"
    for comp in components:
        for suffix, opener in ((".xz", lzma.decompress), (".gz", gzip.decompress), ("", bytes)):  # noqa: B007
            path = f"{comp}/binary-{ARCH}/Packages{suffix}"
            if path in listed:
                break
        else:
            ckey = "install.bootstrap.components"
            raise RecipeError(f"{suite} on {mirror} has no component '{comp}' for {ARCH} (its InRelease lists "
                              f"no {comp}/binary-{ARCH}/Packages)", file=_file_setting(recipe, ckey), key=ckey)
        # The names are kept next to the index they come from: decompressing and reading bookworm's
        # 45 MB main index costs ~2 s, reading the name list ~0.1 s.
        listing = root / "sha256" / listed[path] / "names"
        if listing.is_file():
            names |= set(listing.read_text().split())
            continue
        local = fetch(base + path, listed[path], cache_dir=root, reporter=reporter, timeout=timeout)
        downloaded += local.stat().st_size
        found = parse_packages(opener(local.read_bytes()))
        names |= found
        part = listing.with_suffix(".part")
        part.write_text("\n".join(sorted(found)) + "\n")
        part.replace(listing)  # a name list is complete or absent
    return SuiteIndex(mirror, suite, key, signers[0], frozenset(names), downloaded)


def preflight(recipe: Recipe, reporter: Reporter = NULL_REPORTER, *, keyring: str = DEBIAN_KEYRING,
              cache_dir: Path | None = None, timeout: float = 30.0) -> PreflightReport:
    """Check a bootstrap recipe against its archive; every missing package (or suite) is reported,
    all together, each naming the recipe file and key."""
    if recipe.install.backend is not Backend.BOOTSTRAP or recipe.abstract:
        reporter.info("preflight: only bootstrap recipes have an archive to check; a VM install checks its "
                      "media (pins, signed indexes) at the start of the build")
        return PreflightReport((), 0, 0.0)
    start = time.monotonic()
    b = recipe.install.bootstrap
    suites: list[SuiteIndex] = []
    problems: list[RecipeError] = []
    for mirror, suite, key in suites_of(recipe):
        try:
            suites.append(fetch_suite(mirror, suite, key, b.components, recipe=recipe, keyring=keyring,
                                      cache_dir=cache_dir, reporter=reporter, timeout=timeout))
        except RecipeError as exc:
            problems.append(exc)
            if exc.key == "install.bootstrap.suite" and suite == b.suite:
                break  # -updates and -security of a suite that does not exist would only repeat it
    raise_all(problems)
    available: set[str] = set().union(*(s.packages for s in suites))
    wanted = [(f"install.bootstrap.include[{i}]", p) for i, p in enumerate(b.include)]
    wanted += [(f"packages.base[{i}]", p) for i, p in enumerate(recipe.packages.base)]
    wanted += [(f"packages.extra[{i}]", p) for i, p in enumerate(recipe.packages.extra)]
    if recipe.cloud.enabled:
        wanted += [(f"cloud.packages[{i}]", p) for i, p in enumerate(recipe.cloud.packages)]
    wanted += [("image.firmware", p) for p in BOOT_PACKAGES[recipe.image.firmware]]
    where = f"{b.suite} ({', '.join(s.suite for s in suites)}; {', '.join(b.components)}; {ARCH})"
    for key, pkg in wanted:
        name = pkg.split(":")[0].split("=")[0]  # mmdebstrap accepts pkg:arch and pkg=version
        if name in available:
            continue
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        problems.append(RecipeError(f"package '{pkg}' does not exist in {where}{hint}",
                                    file=_file_setting(recipe, key.split("[")[0]), key=key))
    raise_all(problems)
    seconds = time.monotonic() - start
    fetched = sum(s.downloaded for s in suites)
    reporter.info(f"preflight: {len(wanted)} packages found in {where}, signed by {suites[0].signed_by}; "
                  f"{seconds:.1f} s, {fetched / 2**20:.1f} MiB of indexes downloaded")
    return PreflightReport(tuple(suites), len(wanted), seconds)

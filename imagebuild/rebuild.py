"""``invoke verify --rebuild``: build an image again from what its manifest records and compare, so that a
consumer need not take the build's word for what is in it.

After ``verify`` checked the output offline (signatures, sums, digests, statements), the recipe is taken
from the manifest as it was resolved then (not from today's recipe files), and built cold (no stage
cache, no package cache, no boot test) in a scratch directory of its own, which is removed afterwards
whatever happens. Then:

- the rebuild's packages are compared with the manifest's first: the mirror serves the newest version
  of each package, so once a package the image holds was updated there the image cannot be rebuilt
  from that mirror; that is said, naming each package and both versions (point ``IMAGEBUILD_MIRRORS``
  at a snapshot of the archive to rebuild an older image), and is a failure, not a mismatch;
- then the two images, from the top down (``imagediff``): the same bytes; or the same guest disk in
  another qcow2 encoding; or which partition, and inside it which files differ and how. Anything but
  the same bytes is a failure: ``verify`` never reports "identical" on a mismatch.

Only bootstrap builds are reproducible (docs/reproducible.md): an image whose manifest carries no
``seed`` (a VM install, or a build made before reproducible builds) is refused before anything starts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .attest.errors import VerifyFailed
from .events import NULL_REPORTER, Reporter
from .imagediff import compare_images
from .manifest import MANIFEST
from .pipeline import build
from .recipe import Recipe
from .settings import configure, current
from .stagecache import CacheOptions
from .verify import Verified


@dataclass(frozen=True)
class Rebuilt:
    """The rebuild matched: its sha256 and how long it took."""
    sha256: str
    seconds: float

    def line(self) -> str:
        return f"rebuilt from the manifest's recipe: byte-identical (sha256 {self.sha256[:16]}…, {self.seconds:.0f}s)"


def recorded_recipe(verified: Verified) -> Recipe:
    """The recipe as the build resolved it; refused when the build is not a reproducible one."""
    manifest = verified.manifest
    where = verified.directory / MANIFEST
    if not manifest.get("seed") or manifest.get("source_date_epoch") is None:
        raise VerifyFailed("records no seed and SOURCE_DATE_EPOCH: not a reproducible build (a VM install, "
                           "or one made before reproducible builds), so it cannot be rebuilt to compare",
                           file=where)
    try:
        return Recipe.from_json(json.dumps(manifest["recipe"]))
    except Exception as exc:  # noqa: BLE001 - any reason the recorded recipe no longer loads is the answer
        raise VerifyFailed(f"its recipe no longer loads with this version of imagebuild: {exc}", file=where) from None


def package_changes(recorded: dict[str, str], rebuilt: dict[str, str]) -> tuple[list[str], list[str]]:
    """(moved, other): packages both hold in different versions ("name old → new": the mirror moved on),
    and packages only one of them holds ("name (absent) → new": the inputs do not make this image)."""
    moved: list[str] = []
    other: list[str] = []
    for name in sorted(recorded.keys() | rebuilt.keys()):
        old, new = recorded.get(name), rebuilt.get(name)
        if old != new:
            (moved if old and new else other).append(f"{name} {old or '(absent)'} → {new or '(absent)'}")
    return moved, other


def rebuild_and_compare(verified: Verified, *, reporter: Reporter = NULL_REPORTER,
                        scratch: Path | None = None) -> Rebuilt:
    """Build ``verified``'s recipe again, cold, in a scratch directory (removed afterwards) and compare;
    ``VerifyFailed`` says why they differ."""
    recipe = recorded_recipe(verified)
    manifest: dict[str, Any] = dict(verified.manifest)
    before = current()
    where = scratch or before.work  # not /tmp: a build needs ~4 GiB of scratch space
    where.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="rebuild-", dir=where))
    configure(dataclasses.replace(before, output=top / "output", work=top / "work"))
    try:
        out = build(recipe, reporter=reporter, run_boot_test=False, cache=CacheOptions(use=False))
        theirs = json.loads((out / MANIFEST).read_text())
        moved, other = package_changes(manifest.get("inputs", {}).get("packages", {}),
                                       theirs.get("inputs", {}).get("packages", {}))
        if moved:
            raise VerifyFailed("cannot be rebuilt from this mirror: it now serves other versions than the image "
                               f"holds ({'; '.join(moved[:12])}{' ...' if len(moved) > 12 else ''}); "
                               "rebuild from a snapshot of the archive (IMAGEBUILD_MIRRORS)",
                               file=verified.directory / MANIFEST)
        diff = compare_images(verified.artifact, out / verified.artifact.name, work=top / "compare",
                              reporter=reporter)
        if not diff.same:
            raise VerifyFailed("the rebuild from its recorded inputs differs:\n"
                               + (f"packages: {'; '.join(other)}\n" if other else "") + diff.explain(),
                               file=verified.artifact)
        return Rebuilt(theirs["artifact"]["sha256"], float(theirs.get("timeline", {}).get("end") or 0))
    finally:
        configure(before)
        shutil.rmtree(top, ignore_errors=True)

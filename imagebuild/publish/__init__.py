"""Publishing: send a boot-tested artifact to an image store.

Each store is a small registered record (name, one-line summary, one function), as the generalization
steps are. ``publish()`` is the one entry point: verify the artifact against its manifest (and its boot
test), hand it to the target, record the result next to the artifact.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PublishError
from ..events import NULL_REPORTER, Reporter
from ..recipe import Publish, Recipe
from .common import Artifact, PublishResult, load_published_artifact, record_publish

__all__ = ["TARGETS", "Options", "Target", "publish", "load_published_artifact", "PublishResult"]


@dataclass(frozen=True)
class Options:
    """How to reach the store, per run (never from the recipe): names of configs, not secrets."""
    cloud: str | None = None           # Glance: a clouds.yaml entry; None = OS_CLOUD / OS_* variables
    ovirt_config: str | None = None    # oVirt: a section of ovirt.conf; None = OVIRT_* variables
    rate_limit: int | None = None      # bytes per second, None = as fast as it goes


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    send: Callable[[Artifact, Publish, Options, Reporter], PublishResult]


def _glance(artifact: Artifact, settings: Publish, options: Options, reporter: Reporter) -> PublishResult:
    from .glance import publish_to_glance

    return publish_to_glance(artifact, settings.glance, cloud=options.cloud, reporter=reporter,
                             rate_limit=options.rate_limit)


def _ovirt(artifact: Artifact, settings: Publish, options: Options, reporter: Reporter) -> PublishResult:
    from .ovirt import publish_to_ovirt

    return publish_to_ovirt(artifact, settings.ovirt, config=options.ovirt_config, reporter=reporter,
                            rate_limit=options.rate_limit)


TARGETS: dict[str, Target] = {}


def _register(*targets: Target) -> None:
    for t in targets:
        if not re.match(r"^[a-z][a-z0-9-]*$", t.name):
            raise ValueError(f"publish target name {t.name!r} is not kebab-case")
        if t.name in TARGETS:
            raise ValueError(f"publish target {t.name!r} registered twice")
        TARGETS[t.name] = t


_register(
    Target("glance", "OpenStack Glance (Images API v2) via openstacksdk: clouds.yaml / OS_CLOUD / OS_*",
           _glance),
    Target("ovirt", "oVirt / RHV storage domain via ovirt-engine-sdk and ovirt-imageio: ovirt.conf / OVIRT_*",
           _ovirt),
)


def publish(recipe: Recipe, output_dir: Path | str, *, to: str, options: Options = Options(),
            force: bool = False, reporter: Reporter = NULL_REPORTER) -> PublishResult:
    """Publish the build in ``output_dir`` (made from ``recipe``) to the store ``to``."""
    target = TARGETS.get(to)
    if target is None:
        raise PublishError(f"unknown publish target '{to}' (known: {', '.join(TARGETS)})")
    with reporter.step(f"publish {recipe.name} to {to}", stage=True):
        artifact = load_published_artifact(output_dir, force=force, reporter=reporter)
        if artifact.recipe != recipe.name:
            raise PublishError(f"{output_dir} holds a build of '{artifact.recipe}', not '{recipe.name}'")
        result = target.send(artifact, recipe.publish, options, reporter)
        record_publish(artifact, result)
        reporter.event("published", **result.to_json())
        verb = "published" if result.created else "already published"
        reporter.info(f"{verb}: {result.name} ({result.image_id}) on {to}"
                      + (" [forced: boot test " + artifact.boot_test + "]" if artifact.forced else ""))
    return result

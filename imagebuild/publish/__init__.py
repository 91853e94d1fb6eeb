"""Publishing: send a boot-tested artifact to an image store.

Each store is a small registered record (name, one-line summary, the seed kind it hands its guests, one
function), as the generalization steps are. ``publish()`` is the one entry point: verify the artifact
against its manifest (and its boot test), hand it to the target, record the result next to the artifact.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import PublishError
from ..events import NULL_REPORTER, Reporter
from ..recipe import Publish, Recipe, SeedKind, load_recipe
from ..run import signals_raise
from ..workspace import output_root
from .artifact import Artifact, PublishResult, record_publish
from .gate import load_published_artifact
from .glance import publish_to_glance
from .ovirt import publish_to_ovirt
from .signing import ImageSigner, SigningConfig, configured_signing, load_signer

__all__ = ["TARGETS", "Options", "Target", "publish", "parse_rate", "load_published_artifact",
           "PublishResult", "SigningConfig", "UNSIGNED"]

# Options.signing: sign nothing, whatever the settings say
UNSIGNED = SigningConfig(key=Path(), certificate=Path(), certificate_uuid="")


@dataclass(frozen=True)
class Options:
    """How to reach the store, per run (never from the recipe): names of configs, not secrets."""
    cloud: str | None = None           # Glance: a clouds.yaml entry; None = OS_CLOUD / OS_* variables
    ovirt_config: str | None = None    # oVirt: a section of ovirt.conf; None = OVIRT_* variables
    rate_limit: int | None = None      # bytes per second, None = as fast as it goes
    # Glance image signatures: the key and certificate files and the certificate's Barbican UUID;
    # None = the settings' (IMAGEBUILD_GLANCE_SIGNING_*), UNSIGNED = none
    signing: SigningConfig | None = None


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    # How this store hands a guest its user, key and hostname, as a boot-test cell's seed imitates it: a
    # cloud image goes to this store only if a cell with this seed passed.
    seed: SeedKind
    send: Callable[[Artifact, Publish, Options, Reporter, ImageSigner | None], PublishResult]
    signs: bool = False                # carries OpenStack image signatures (img_signature*)


def _glance(artifact: Artifact, settings: Publish, options: Options, reporter: Reporter,
            signer: ImageSigner | None) -> PublishResult:
    return publish_to_glance(artifact, settings.glance, cloud=options.cloud, reporter=reporter,
                             rate_limit=options.rate_limit, signer=signer)


def _ovirt(artifact: Artifact, settings: Publish, options: Options, reporter: Reporter,
           signer: ImageSigner | None) -> PublishResult:
    return publish_to_ovirt(artifact, settings.ovirt, config=options.ovirt_config, reporter=reporter,
                            rate_limit=options.rate_limit)


def parse_rate(text: str | None) -> int | None:
    """'50M' -> bytes per second (K, M, G are powers of 1024); None or '' -> no limit."""
    if not text:
        return None
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*$", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise PublishError(f"--limit-rate {text!r}: expected a number of bytes per second, e.g. 50M")
    return int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " "))


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
           SeedKind.NOVA, _glance, signs=True),
    Target("ovirt", "oVirt / RHV storage domain via ovirt-engine-sdk and ovirt-imageio: ovirt.conf / OVIRT_*",
           SeedKind.OVIRT, _ovirt),
)


def publish(recipe: Recipe | str, output_dir: Path | str | None = None, *, to: str,
            options: Options | None = None, cloud: str | None = None, force: bool = False,
            reporter: Reporter = NULL_REPORTER) -> PublishResult:
    """Publish the build of ``recipe`` (a Recipe or a recipe name) to the store ``to``.

    ``output_dir`` defaults to ``output/<recipe>/`` (``$IMAGEBUILD_OUTPUT``); ``cloud`` is a shortcut
    for ``Options(cloud=...)``. The recipe's current ``[publish]`` settings apply; the image facts
    (os_*, hw_*, sizes) come from the manifest, i.e. from what was built and tested.
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    if output_dir is None:
        output_dir = output_root() / recipe.name
    options = options or Options()
    if cloud is not None:
        options = replace(options, cloud=cloud)
    target = TARGETS.get(to)
    if target is None:
        raise PublishError(f"unknown publish target '{to}' (known: {', '.join(TARGETS)})")
    # SIGTERM must unwind through the upload's cleanup like Ctrl-C does (callers may not have set it up).
    guard = signals_raise() if threading.current_thread() is threading.main_thread() else nullcontext()
    with guard, reporter.step(f"publish {recipe.name} to {to}", stage=True):
        signer = _signer(options, target, reporter)  # before anything is hashed or sent
        artifact = load_published_artifact(output_dir, force=force, seed=target.seed, store=to,
                                           reporter=reporter)
        if artifact.recipe != recipe.name:
            raise PublishError(f"{output_dir} holds a build of '{artifact.recipe}', not '{recipe.name}'")
        result = target.send(artifact, recipe.publish, options, reporter, signer)
        record_publish(artifact, result)
        reporter.event("published", **result.to_json())
        verb = "published" if result.created else "already published (nothing sent)"
        reporter.info(f"{verb}: {result.name} ({result.image_id}) on {to}"
                      + (" [forced: boot test " + artifact.boot_test + "]" if artifact.forced else ""))
    return result


def _signer(options: Options, target: Target, reporter: Reporter) -> ImageSigner | None:
    """The image signer, loaded and checked (key, certificate, UUID) before the publish starts, for a
    store that carries signatures; None when signing is not configured."""
    config = options.signing if options.signing is not None else configured_signing()
    if config is None or config == UNSIGNED:
        return None
    if not target.signs:
        reporter.info(f"{target.name} has no image-signature properties: the signing certificate is for Glance")
        return None
    signer = load_signer(config)
    reporter.info(f"signing the image for Glance: certificate {signer.certificate_uuid} "
                  f"(sha256 fingerprint {signer.fingerprint[:16]}...), RSA-PSS over its sha256")
    return signer

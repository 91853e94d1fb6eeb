"""The publish gate: ``load_published_artifact`` reads ``manifest.json``, re-hashes the qcow2 and compares
sha256 (and sha512) with the manifest, asks qemu-img what the file is (format named, no backing file,
virtual size as recorded), and refuses an image whose boot test did not pass unless ``force`` is given,
in which case the artifact says so and every store records it. A cloud image is refused, too, by a store
whose own seed (Glance: nova, oVirt: ovirt) no passed boot-test cell booted with.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..attest.errors import AttestationError
from ..attest.outputs import PROVENANCE, SUMS, read_sums
from ..digest import hash_file, sha256_file
from ..errors import PublishError, ToolMissing
from ..events import NULL_REPORTER, Reporter
from ..recipe import SeedKind
from ..run import run
from .artifact import MANIFEST, Artifact, ImageFacts
from .proof import proven_by, recorded_recipe, require_seed
from .stream import Progress

QCOW2_MAGIC = b"QFI\xfb"
_HEX = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "sha512": re.compile(r"^[0-9a-f]{128}$")}


def _get(data: dict[str, Any], dotted: str, kind: type | tuple[type, ...], manifest: Path) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise PublishError(f"{manifest}: '{dotted}' is missing; is this a manifest from a build?")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise PublishError(f"{manifest}: '{dotted}' has the wrong type ({type(value).__name__})")
    return value


def _qemu_img_info(path: Path, reporter: Reporter) -> dict[str, Any]:
    try:
        res = run(["qemu-img", "info", "--output=json", "-f", "qcow2", path], reporter=reporter,
                  timeout=120, purpose="check what the artifact is before publishing it")
    except ToolMissing as exc:
        raise PublishError(str(exc)) from None
    return json.loads(res.stdout)


def load_published_artifact(output_dir: Path | str, *, force: bool = False, seed: SeedKind | None = None,
                            store: str = "", reporter: Reporter = NULL_REPORTER) -> Artifact:
    """Read and verify a build's output folder; raise ``PublishError`` if it must not be published.

    ``force`` lets an image whose boot test failed or did not run through (and is recorded as such);
    it never lets through an artifact whose bytes differ from its manifest. ``seed`` is the seed kind
    the ``store`` (named in the refusal) hands its guests: a cloud image whose cell with that seed did
    not pass is refused (unless forced, as the firmware a cell must prove).
    """
    out = Path(output_dir)
    manifest_path = out / MANIFEST
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise PublishError(f"no {MANIFEST} in {out}: build the recipe first (invoke build)") from None
    except OSError as exc:
        raise PublishError(f"cannot read {manifest_path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PublishError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise PublishError(f"{manifest_path}: unknown manifest schema {data.get('schema')!r} (expected 1)"
                           if isinstance(data, dict) else f"{manifest_path}: not a manifest")

    art = _get(data, "artifact", dict, manifest_path)
    file_name = _get(data, "artifact.file", str, manifest_path)
    if "/" in file_name or file_name in ("", ".", ".."):
        raise PublishError(f"{manifest_path}: artifact.file must be a file name, got {file_name!r}")
    fmt = _get(data, "artifact.format", str, manifest_path)
    if fmt != "qcow2":
        raise PublishError(f"{manifest_path}: artifact.format is {fmt!r}; only qcow2 is published")
    want = {a: _get(data, f"artifact.{a}", str, manifest_path).lower() for a in ("sha256", "sha512")}
    for algo, value in want.items():
        if not _HEX[algo].match(value):
            raise PublishError(f"{manifest_path}: artifact.{algo} is not a {algo} hex digest")
    content = art.get("content_sha256")
    if content is not None and not (isinstance(content, str) and _HEX["sha256"].match(content)):
        raise PublishError(f"{manifest_path}: artifact.content_sha256 is not a sha256 hex digest")
    virtual_size = _get(data, "artifact.virtual_size", int, manifest_path)
    recipe = _get(data, "recipe", dict, manifest_path)
    image = _get(data, "recipe.image", dict, manifest_path)
    recipe_name = _get(data, "recipe.name", str, manifest_path)
    build_id = _get(data, "build_id", str, manifest_path)

    path = out / file_name
    if not path.is_file():
        raise PublishError(f"{path} (named by {manifest_path}) does not exist")
    file_size = path.stat().st_size
    if art.get("file_size") not in (None, file_size):
        raise PublishError(f"{path} is {file_size} bytes but the manifest says {art['file_size']}: "
                           "not the artifact that was built and tested")
    with open(path, "rb") as f:
        if f.read(4) != QCOW2_MAGIC:
            raise PublishError(f"{path} is not a qcow2 file (bad magic)")

    with reporter.step(f"verify {path.name} against its manifest"):
        progress = Progress(reporter, "hash", file_size)
        got = hash_file(path, ("sha256", "sha512"), progress.add)
        progress.done()
        for algo in ("sha256", "sha512"):
            if got[algo] != want[algo]:
                raise PublishError(f"{path}: {algo} is {got[algo]} but the manifest says {want[algo]}: "
                                   "the file changed after it was built and tested; rebuild it")
        info = _qemu_img_info(path, reporter)
        if info.get("format") != "qcow2":
            raise PublishError(f"{path}: qemu-img reads it as {info.get('format')!r}, not qcow2")
        if info.get("backing-filename") or info.get("full-backing-filename"):
            raise PublishError(f"{path} has a backing file ({info.get('backing-filename')}); "
                               "an image to publish must stand alone")
        if info.get("virtual-size") != virtual_size:
            raise PublishError(f"{path}: virtual size {info.get('virtual-size')} differs from the "
                               f"manifest's {virtual_size}")

    provenance_sha256 = _provenance_digest(out, file_name, got["sha256"])

    bt = data.get("boot_test")
    if bt is None:
        boot_test = "not-run"
    elif isinstance(bt, dict) and isinstance(bt.get("passed"), bool):
        boot_test = "passed" if bt["passed"] else "failed"
    else:
        raise PublishError(f"{manifest_path}: boot_test must be null or have a boolean 'passed'")
    forced = False
    if boot_test != "passed":
        if not force:
            what = "failed" if boot_test == "failed" else "was not run"
            raise PublishError(f"{recipe_name}: the boot test {what} for build {build_id}; "
                               "only boot-tested images are published "
                               "(--force publishes anyway and records that it was forced)")
        forced = True
        reporter.info(f"⚠ publishing {build_id} although its boot test {boot_test.replace('-', ' ')}"
                      " (--force); the image is marked imagebuild_forced=true")
        reporter.event("publish-forced", build_id=build_id, boot_test=boot_test)

    packages = recipe.get("packages") or {}
    all_packages = list(packages.get("base") or []) + list(packages.get("extra") or [])
    parsed = recorded_recipe(manifest_path, recipe)
    proven = proven_by(manifest_path, parsed, bt, forced)
    if seed is not None and parsed.cloud.enabled and not forced:
        require_seed(parsed.name, build_id, bt, seed, store or "this store")
    facts = ImageFacts(
        os_distro=str(image.get("os_distro") or ""),
        os_version=str(image.get("os_version") or recipe.get("version") or ""),
        os_type=str(image.get("os_type") or "linux"),
        machine_type=proven.machine,
        boot_firmware=proven.firmware,
        min_ram_mib=int(image.get("min_ram_mib") or 512),
        guest_agent="qemu-guest-agent" in all_packages and (proven.guest_agent or forced),
        passed_cells=proven.cells,
        disk_buses=proven.disk_buses,
        live_checks=proven.live,
        matrix=proven.matrix,
        cloud=parsed.cloud.enabled,
        admin_user=parsed.cloud.default_user if parsed.cloud.enabled else "",
        cloud_seeds=tuple(sorted(s for s in proven.seeds if s != SeedKind.NONE)),
    )
    if not facts.os_distro:
        raise PublishError(f"{manifest_path}: recipe.image.os_distro is empty")
    return Artifact(
        output_dir=out, path=path, recipe=recipe_name, recipe_version=str(recipe.get("version") or "1"),
        build_id=build_id, finished=str(data.get("finished") or ""), format=fmt,
        virtual_size=virtual_size, file_size=file_size, sha256=got["sha256"], sha512=got["sha512"],
        manifest_sha256=hashlib.sha256(raw).hexdigest(), image=facts, boot_test=boot_test,
        boot_test_accelerator=str(bt.get("accelerator") or "") if isinstance(bt, dict) else "",
        forced=forced, publish_settings=dict(recipe.get("publish") or {}),
        content_sha256=content or "", provenance_sha256=provenance_sha256)


def _provenance_digest(out: Path, artifact_name: str, artifact_sha256: str) -> str:
    """The sha256 of the build's provenance statement as ``SHA256SUMS`` lists it, after checking the file
    still has it; "" for an output from before provenance was written. ``SHA256SUMS`` must agree with the
    artifact, and a provenance file it does not list was added after the build: both refused."""
    sums_path, statement = out / SUMS, out / PROVENANCE
    if not sums_path.exists():
        if statement.exists():
            raise PublishError(f"{statement}: there is no {SUMS} beside it to say it is the build's")
        return ""
    try:
        sums = read_sums(sums_path)
    except AttestationError as exc:
        raise PublishError(str(exc)) from None
    if sums.get(artifact_name, artifact_sha256) != artifact_sha256:
        raise PublishError(f"{sums_path} lists {artifact_name} with sha256 {sums[artifact_name]}, the file has "
                           f"{artifact_sha256}: not the output of one build")
    listed = sums.get(PROVENANCE)
    if listed is None:
        if statement.exists():
            raise PublishError(f"{statement}: not listed in {SUMS}: added after the build")
        return ""
    try:
        actual = sha256_file(statement)
    except FileNotFoundError:
        raise PublishError(f"{statement}: listed in {SUMS} but missing") from None
    except OSError as exc:
        raise PublishError(f"cannot read {statement}: {exc.strerror}") from None
    if actual != listed:
        raise PublishError(f"{statement}: its sha256 is {actual}, {SUMS} lists {listed}: changed after the build")
    return listed

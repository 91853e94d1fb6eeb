"""in-toto v1 Statements about one image: SLSA v1 provenance (how it was built, from what) and the boot
test (where it booted and which checks passed), both from the build's manifest.

https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
https://slsa.dev/spec/v1.0/provenance
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .dpkg import DebPackage, installed_packages
from .errors import AttestationError
from .sbom import _deb_sha256, _digest_of, _image, purl

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
# The next three are ours (imagebuild's), not registered anywhere: `.invalid` never resolves (RFC 2606).
BUILD_TYPE = "https://imagebuild.invalid/build/v1"
BOOT_TEST_TYPE = "https://imagebuild.invalid/boot-test/v1"
DEFAULT_BUILDER_ID = "https://imagebuild.invalid/builder/local"


def subjects(manifest: Mapping[str, Any], content_sha256: str | None = None) -> list[dict[str, Any]]:
    """The artifact (sha256, and sha512 when recorded) and, when known, its content: the sha256 of the
    guest-visible raw disk (``qemu-img convert -O raw``), as a second subject named ``STEM.raw``, so two
    images that differ only in qcow2 encoding are told apart from two that differ in content."""
    image = _image(manifest)
    digest = {"sha256": image["sha256"]}
    if image["sha512"]:
        digest["sha512"] = image["sha512"]
    out: list[dict[str, Any]] = [{"name": image["file"], "digest": digest}]
    artifact = manifest["artifact"]
    content = content_sha256 or artifact.get("content_sha256") or (artifact.get("content") or {}).get("sha256")
    if content:
        stem = image["file"].rsplit(".", 1)[0]
        out.append({"name": f"{stem}.raw", "digest": {"sha256": content}})
    return out


def _statement(subject: list[dict[str, Any]], predicate_type: str, predicate: dict[str, Any]) -> dict[str, Any]:
    return {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": predicate_type, "predicate": predicate}


def _mirror_of(manifest: Mapping[str, Any]) -> dict[str, str]:
    """suite → mirror, from the manifest's ``inputs.sources`` (``deb URL SUITE COMPONENTS...``)."""
    out: dict[str, str] = {}
    for line in manifest.get("inputs", {}).get("sources", []):
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            out.setdefault(parts[2], parts[1].rstrip("/"))
    return out


def provenance(manifest: Mapping[str, Any], *, dpkg_status: str | Iterable[DebPackage] | None = None,
               deb_sha256: Mapping[str, str] | None = None, archive: Mapping[str, str] | None = None,
               content_sha256: str | None = None, builder_id: str = DEFAULT_BUILDER_ID,
               byproducts: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An in-toto Statement with a SLSA v1 provenance predicate.

    ``dpkg_status``: the image's installed packages (gives architectures); without it, the manifest's
    ``inputs.packages`` (name → version, architecture unknown). ``archive``: suite → sha256 of its
    InRelease (``plan.archive_digests``), default the manifest's ``inputs.archive``. ``byproducts``:
    file name → sha256 of documents made beside the image (the SBOMs)."""
    image = _image(manifest)
    inputs = manifest.get("inputs", {})
    digests = _deb_sha256(manifest, deb_sha256)
    deps: list[dict[str, Any]] = []
    if dpkg_status is not None:
        pkgs = installed_packages(dpkg_status) if isinstance(dpkg_status, str) else sorted(dpkg_status)
        for pkg in pkgs:
            dep: dict[str, Any] = {"uri": purl(pkg, namespace=image["distro_ns"], distro=image["distro"]),
                                   "name": pkg.name}
            sha = _digest_of(pkg, digests)
            if sha:
                dep["digest"] = {"sha256": sha}
            deps.append(dep)
    else:
        for name, version in sorted(inputs.get("packages", {}).items()):
            pkg = DebPackage(name=name, architecture="", version=version, source=name, source_version=version)
            dep = {"uri": purl(pkg, namespace=image["distro_ns"], distro=image["distro"]),
                   "name": name}
            sha = digests.get(name)
            if sha:
                dep["digest"] = {"sha256": sha}
            deps.append(dep)
    mirrors = _mirror_of(manifest)
    for suite, sha in sorted((archive if archive is not None else inputs.get("archive", {})).items()):
        mirror = mirrors.get(suite) or str(inputs.get("mirror", "")).rstrip("/")
        deps.append({"uri": f"{mirror}/dists/{suite}/InRelease", "name": f"{suite} InRelease",
                     "digest": {"sha256": sha}})
    for tool, version in sorted(manifest.get("tools", {}).items()):
        # A tool's version is a line of its own --version output, not a digest: an annotation.
        deps.append({"uri": f"pkg:generic/{tool}", "name": tool, "annotations": {"version": str(version)}})
    metadata = {"invocationId": manifest.get("build_id", "")}
    if manifest.get("started"):
        metadata["startedOn"] = manifest["started"]
    if manifest.get("finished"):
        metadata["finishedOn"] = manifest["finished"]
    internal = {k: manifest[k] for k in ("accelerator", "source_date_epoch") if k in manifest}
    predicate: dict[str, Any] = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"recipe": manifest.get("recipe", {})},
            "internalParameters": internal,
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {"id": builder_id, "version": {"imagebuild": _version()}},
            "metadata": metadata,
        },
    }
    if byproducts:
        predicate["runDetails"]["byproducts"] = [{"name": n, "digest": {"sha256": d}}
                                                 for n, d in sorted(byproducts.items())]
    return _statement(subjects(manifest, content_sha256), SLSA_PROVENANCE, predicate)


def boot_test(manifest: Mapping[str, Any], *, content_sha256: str | None = None) -> dict[str, Any]:
    """An in-toto Statement that the image booted: every cell (firmware, machine, seed, disk bus,
    passed), each check's name and result, the accelerator and the times, from ``manifest["boot_test"]``.
    A consumer can require e.g. a passed cell with ``firmware == "secure-boot"`` before use."""
    result = manifest.get("boot_test")
    if not isinstance(result, Mapping) or not result.get("cells"):
        raise AttestationError("the manifest has no boot-test result (built with --no-boot-test?): "
                               "there is nothing to attest")

    def check(c: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": c["name"], "ok": bool(c.get("ok")), "skipped": bool(c.get("skipped", False))}

    cells = [{
        "cell": c.get("cell", f"{c.get('firmware')}/{c.get('machine')}"),
        "firmware": c.get("firmware"), "machine": c.get("machine"), "seed": c.get("seed"),
        "diskBus": c.get("disk_bus"), "accelerator": c.get("accelerator", result.get("accelerator")),
        "passed": bool(c.get("passed")), "seconds": c.get("seconds"),
        "checks": [check(x) for x in c.get("checks", [])],
    } for c in result["cells"]]
    predicate = {
        "passed": bool(result.get("passed")),
        "accelerator": result.get("accelerator", manifest.get("accelerator")),
        "cells": cells,
        "matrixChecks": [check(x) for x in result.get("matrix_checks", [])],
        "buildId": manifest.get("build_id", ""),
        "seconds": manifest.get("stages", {}).get("boot-test"),
        "startedOn": manifest.get("started"),
        "finishedOn": manifest.get("finished"),
    }
    return _statement(subjects(manifest, content_sha256), BOOT_TEST_TYPE, predicate)


def statement_bytes(statement: Mapping[str, Any]) -> bytes:
    """The bytes that get signed: sorted keys, no whitespace, UTF-8, so one statement has one encoding."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _version() -> str:
    try:
        return version("imagebuild")
    except PackageNotFoundError:
        return "unknown"

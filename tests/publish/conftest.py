"""Fixtures for the publish tests: a real Glance (session-wide), clouds.yaml, and real qcow2 builds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import GlanceServer, ImageioServer, glance_venv, imageio_venv, venv_ready  # noqa: E402

from imagebuild.recipe import Glance, Ovirt, Publish, Recipe, SeedKind, load_recipe  # noqa: E402

CLOUD = "test-glance"


def _need(venv: Path, what: str) -> None:
    if venv_ready(venv):
        return
    msg = f"{what} is not installed at {venv}: run .ci/publish-setup"
    if os.environ.get("CI"):
        pytest.fail(msg)  # in CI a missing server is a broken setup, not a reason to skip
    pytest.skip(msg)


@pytest.fixture(scope="session")
def glance() -> Iterator[GlanceServer]:
    _need(glance_venv(), "Glance")
    with GlanceServer() as server:
        yield server


@pytest.fixture(scope="session")
def imageio() -> Iterator[ImageioServer]:
    _need(imageio_venv(), "ovirt-imageio")
    with ImageioServer() as server:
        yield server


@pytest.fixture
def cloud(glance: GlanceServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clouds.yaml naming the test Glance, found by openstacksdk through OS_CLIENT_CONFIG_FILE."""
    path = tmp_path / "clouds.yaml"
    path.write_text(glance.clouds_yaml(CLOUD))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    for var in [v for v in os.environ if v.startswith("OS_") and v != "OS_CLIENT_CONFIG_FILE"]:
        monkeypatch.delenv(var)
    return CLOUD


def glance_conn(glance: GlanceServer):  # type: ignore[no-untyped-def]
    import openstack

    return openstack.connect(auth_type="none", auth={"endpoint": glance.endpoint},
                             image_endpoint_override=glance.endpoint, image_api_version="2")


def recipe_for(name: str, **glance_settings: object) -> Recipe:
    base = load_recipe("debian12")
    return dataclasses.replace(base, name=name,
                               publish=Publish(glance=Glance(**glance_settings),  # type: ignore[arg-type]
                                               ovirt=Ovirt(storage_domain="images")))


def make_qcow2(path: Path, *, virtual_mib: int, data_mib: float) -> None:
    """A real, compressed qcow2 (compat 1.1) with ``data_mib`` of random (incompressible) data."""
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        f.truncate(virtual_mib * 2**20)
        f.seek(2**20)
        remaining = int(data_mib * 2**20)
        while remaining > 0:
            chunk = os.urandom(min(remaining, 4 * 2**20))
            f.write(chunk)
            remaining -= len(chunk)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-c", "-o", "compat=1.1",
                    str(raw), str(path)], check=True)
    raw.unlink()


CHECKS = ("multi-user", "vcpu-hotplug", "memory-hotplug", "balloon", "fsfreeze")


def planned_cells(recipe: Recipe) -> list[str]:
    """The cells a build boots, as boottest.matrix.plan_cells pairs them: the matrix and the seed kinds
    (a cloud image's) each given in turn, walked until both are used up. "bios/pc+nova"; no seed: "bios/pc"."""
    cells = [str(c) for c in recipe.boot_test.cells(recipe.image.firmware)]
    seeds = recipe.boot_test.seeds if recipe.cloud.enabled else (SeedKind.NONE,)
    pairs = [(cells[i % len(cells)], seeds[i % len(seeds)]) for i in range(max(len(cells), len(seeds)))]
    return [cell if seed == SeedKind.NONE else f"{cell}+{seed}" for cell, seed in pairs]


def write_manifest(out: Path, recipe: Recipe, qcow2: Path, *, boot_test: bool | None = True,
                   build_id: str | None = None, finished: str = "2026-11-27T07:30:00+00:00",
                   cells: dict[str, bool] | None = None, seeded: bool = True, proof: bool = False) -> dict:
    """A manifest as a build writes it; ``cells`` ("bios/pc+nova" or "bios/pc" → passed) defaults to
    the cells the recipe's build boots, with the outcome ``boot_test``. Every cell runs ``CHECKS``.
    ``seeded=False``: as a build from before seeded cells wrote it (no ``seed`` key; its cells' seeds
    are ignored). ``proof``: as builds write it now, with the artifact's content digest and a (plain,
    unsigned) provenance statement listed in SHA256SUMS."""
    data = qcow2.read_bytes()
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(qcow2)],
                                     check=True, capture_output=True, text=True).stdout)
    build_id = build_id or f"{recipe.name}-{finished[:19].replace('-', '').replace(':', '')}-ab12cd"
    manifest = {
        "schema": 1, "build_id": build_id, "started": finished, "finished": finished,
        "recipe": json.loads(recipe.to_json()),
        "artifact": {"file": qcow2.name, "format": "qcow2", "compat": "1.1", "compression": "zlib",
                     "virtual_size": info["virtual-size"], "file_size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest()},
        "boot_test": None if boot_test is None else {
            "passed": boot_test, "accelerator": "tcg", "cells": [
                {"cell": cell, "firmware": cell.split("/")[0], "machine": cell.split("/")[1], "passed": ok,
                 "disk_bus": ("virtio", "scsi")[i % 2],
                 "accelerator": "tcg", "mac": "52:54:00:12:34:56", "seconds_to_agent": 40.0, "seconds": 60.0,
                 "checks": [{"name": name, "ok": ok, "detail": "synthetic manifest for tests", "skipped": False,
                             "seconds": 1.0} for name in CHECKS],
                 "console_log": f"boot-console-{label.replace('/', '-').replace('+', '-')}.log",
                 **({"seed": seed or "none"} if seeded else {})}
                for i, (label, ok) in enumerate((cells if cells is not None else
                                                 dict.fromkeys(planned_cells(recipe), boot_test)).items())
                for cell, _, seed in [label.partition("+")]]},
        "accelerator": "tcg", "stages": {}, "inputs": {}, "tools": {},
    }
    sums = {qcow2.name: manifest["artifact"]["sha256"]}
    if proof:
        from imagebuild.attest.outputs import PROVENANCE
        from imagebuild.content_digest import content_sha256

        manifest["artifact"]["content_sha256"] = content_sha256(qcow2, "qcow2")
        statement = {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1",
                     "subject": [{"name": qcow2.name, "digest": {"sha256": manifest["artifact"]["sha256"]}}],
                     "predicate": {"buildDefinition": {"externalParameters": {"build_id": build_id}}}}
        text = json.dumps(statement, sort_keys=True) + "\n"
        (out / PROVENANCE).write_text(text)
        sums[PROVENANCE] = hashlib.sha256(text.encode()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sums["manifest.json"] = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    (out / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return manifest


MakeBuild = Callable[..., Path]


@pytest.fixture
def make_build(tmp_path: Path) -> MakeBuild:
    """Make ``output/<recipe>/`` as a build leaves it: a real qcow2 plus a manifest."""
    counter = iter(range(1000))

    def make(recipe: Recipe, *, data_mib: float = 0.25, virtual_mib: int = 1536,
             boot_test: bool | None = True, finished: str = "2026-11-27T07:30:00+00:00",
             cells: dict[str, bool] | None = None, seeded: bool = True, proof: bool = False,
             same_bytes_as: Path | None = None) -> Path:
        """``same_bytes_as``: another output whose artifact this build's is byte for byte (a rebuild
        that changed nothing), with its own build id, time and manifest."""
        out = tmp_path / f"output-{next(counter)}" / recipe.name
        out.mkdir(parents=True)
        qcow2 = out / f"{recipe.name}.qcow2"
        if same_bytes_as is not None:
            shutil.copyfile(same_bytes_as / qcow2.name, qcow2)
        else:
            make_qcow2(qcow2, virtual_mib=virtual_mib, data_mib=data_mib)
        write_manifest(out, recipe, qcow2, boot_test=boot_test, finished=finished, cells=cells, seeded=seeded,
                       proof=proof)
        return out

    return make

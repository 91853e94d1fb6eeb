"""A build's output directory made the way the build makes it, without building: a small real qcow2
(qemu-img), the manifest of ``test_attest.make_manifest`` with the image's real digests, SHA256SUMS, then
``write_attestations``. Shared by test_attest_outputs.py and test_verify.py."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

from imagebuild.attest.outputs import Attestations, write_attestations
from imagebuild.content_digest import content_sha256
from imagebuild.digest import hash_file
from imagebuild.manifest import write_manifest, write_sha256sums

from .test_attest import DPKG_STATUS, make_manifest

MIB = 1 << 20


def ssh_key(directory: Path, name: str = "id_ed25519", kind: str = "ed25519") -> Path:
    """A throwaway key pair (``ssh-keygen -N ''``); the private key's path (the public one adds .pub)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test", "-f", str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


def make_image(path: Path, seed: int = 1) -> Path:
    """An 8 MiB disk with some data, as a compressed qcow2."""
    raw = path.with_suffix(".raw")
    rnd = random.Random(seed)
    with open(raw, "wb") as f:
        f.truncate(8 * MIB)
        f.write(rnd.randbytes(300_000))
        f.seek(5 * MIB)
        f.write(b"golden image %d\n" % seed * 10_000)
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True,
                   capture_output=True, timeout=60)
    raw.unlink()
    return path


def artifact_record(image: Path) -> dict[str, Any]:
    digests = hash_file(image)
    return {"file": image.name, "format": "qcow2", "compat": "1.1", "compression": "zlib",
            "sha256": digests["sha256"], "sha512": digests["sha512"], "file_size": image.stat().st_size,
            "virtual_size": 8 * MIB, "content_sha256": content_sha256(image, "qcow2")}


def make_output(directory: Path, key: Path | None, *, dpkg_status: str | None = DPKG_STATUS, boot: bool = True,
                deb_cache: Path | None = None, manifest_changes: dict[str, Any] | None = None,
                ) -> tuple[Path, dict[str, Any], Attestations]:
    """The output directory of a finished build, its manifest (as written) and what was attested."""
    directory.mkdir(parents=True, exist_ok=True)
    image = make_image(directory / "debian12.qcow2")
    manifest = make_manifest()
    manifest["artifact"] = artifact_record(image)
    if not boot:
        manifest["boot_test"] = None
    manifest.update(manifest_changes or {})
    write_manifest(directory, manifest)
    write_sha256sums(directory, {image.name: manifest["artifact"]["sha256"], "manifest.json": None})
    result = write_attestations(directory, manifest, artifact=image,
                                content_sha256=manifest["artifact"]["content_sha256"], dpkg_status=dpkg_status,
                                key=key, deb_cache=deb_cache)
    return directory, json.loads((directory / "manifest.json").read_text()), result

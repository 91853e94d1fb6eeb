"""The session's real debian12 build (signed with the session's key) as a consumer checks it: the SBOMs list
what the image's own package database holds, the statements are signed and name the artifact's digests,
the content digest is the sha256 of the disk the guest sees, and ``invoke verify`` passes on the build and
fails, naming the file, on a copy whose manifest was edited after signing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import run_invoke

pytestmark = pytest.mark.build


def _statement(path: Path) -> dict:
    envelope = json.loads(path.read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and envelope["signatures"]
    import base64
    return json.loads(base64.b64decode(envelope["payload"]))


def test_the_build_writes_signed_attestations(built_debian12):
    names = {p.name for p in built_debian12.iterdir()}
    assert {"sbom.spdx.json", "sbom.cdx.json", "provenance.intoto.jsonl", "boot-test.intoto.jsonl",
            "SHA256SUMS.sig"} <= names
    subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=built_debian12, check=True)
    manifest = json.loads((built_debian12 / "manifest.json").read_text())
    art = manifest["artifact"]
    prov = _statement(built_debian12 / "provenance.intoto.jsonl")
    assert prov["predicateType"] == "https://slsa.dev/provenance/v1"
    digests = {s["name"]: s["digest"] for s in prov["subject"]}
    assert digests["debian12.qcow2"]["sha256"] == art["sha256"]
    boot = _statement(built_debian12 / "boot-test.intoto.jsonl")
    cells = {c["cell"]: c for c in boot["predicate"]["cells"]}
    assert cells["secure-boot/q35"]["passed"] and len(cells) == 4


def test_the_sbom_is_the_image_package_database(built_debian12):
    manifest = json.loads((built_debian12 / "manifest.json").read_text())
    packages = manifest["inputs"]["packages"]
    cdx = json.loads((built_debian12 / "sbom.cdx.json").read_text())
    purls = {c["purl"] for c in cdx["components"] if c.get("purl", "").startswith("pkg:deb/")}
    assert len(purls) == len(packages)
    assert any(p.startswith("pkg:deb/debian/cloud-init@") for p in purls)
    spdx = json.loads((built_debian12 / "sbom.spdx.json").read_text())
    assert spdx["spdxVersion"] == "SPDX-2.3" and len(spdx["packages"]) > len(packages)


def test_the_content_digest_is_the_guest_visible_disk(built_debian12, tmp_path):
    manifest = json.loads((built_debian12 / "manifest.json").read_text())
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(built_debian12 / "debian12.qcow2"),
                    str(raw)], check=True)
    h = hashlib.sha256()
    with raw.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    assert manifest["artifact"]["content_sha256"] == h.hexdigest() != manifest["artifact"]["sha256"]


def test_verify_passes_on_the_build_and_names_a_manifest_edited_after_signing(built_debian12, invoke_env, tmp_path):
    public = invoke_env["IMAGEBUILD_SIGNING_KEY"] + ".pub"
    res = run_invoke(["verify", str(built_debian12), "--key", public], invoke_env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    copy = tmp_path / "debian12"
    subprocess.run(["cp", "-al", str(built_debian12), str(copy)], check=True)  # hard links: no 330 MB copy
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recipe"]["packages"]["extra"].append("telnet")
    os.unlink(copy / "manifest.json")  # a new file: the build's own stays as it is
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    res = run_invoke(["verify", str(copy), "--key", public], invoke_env, timeout=600)
    assert res.returncode == 9 and "manifest.json" in res.stderr and "Traceback" not in res.stderr, res.stderr

"""The build manifest (JSON) and SHA256SUMS, written next to the artifact."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .digest import sha256_file
from .errors import ImageBuildError

SCHEMA = 1
MANIFEST = "manifest.json"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST
    write_json_atomic(path, {"schema": SCHEMA, **manifest})
    return path


def manifest_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sha256sums(directory: Path, files: dict[str, str | None]) -> Path:
    """``files`` maps a name to its sha256 when already known (the artifact: hashed once, at creation)."""
    lines = []
    for name, known in files.items():
        sha256 = known or sha256_file(directory / name)
        lines.append(f"{sha256}  {name}\n")
    path = directory / "SHA256SUMS"
    tmp = path.with_name(".SHA256SUMS.partial")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise ImageBuildError(f"{path}: cannot read the build manifest ({exc.strerror})") from None
    except ValueError as exc:
        raise ImageBuildError(f"{path}: not valid JSON ({exc})") from None
    if data.get("schema") != SCHEMA:
        raise ImageBuildError(f"{path}: unknown manifest schema {data.get('schema')!r}")
    return data

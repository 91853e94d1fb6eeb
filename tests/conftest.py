"""Shared fixtures. Tiers are pytest markers (see pyproject): unit, guestfs, vm, build, publish."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def accel():
    """The accelerator every real guest in the suite uses (probed once; cached per host boot)."""
    from imagebuild.accel import choose_accel
    return choose_accel()


@pytest.fixture(scope="session")
def invoke_env(tmp_path_factory):
    """Environment for running `invoke` as a user would, with output and scratch in temp dirs."""
    base = tmp_path_factory.mktemp("imagebuild")
    env = dict(os.environ)
    env["IMAGEBUILD_OUTPUT"] = str(base / "output")
    env["IMAGEBUILD_WORK"] = str(base / "work")
    # a cache of the session's own, so the stage-cache tests see exactly this session's builds; the KVM
    # probe's answer (per host boot) is shared, not probed again
    from imagebuild.paths import cache_root
    env["IMAGEBUILD_CACHE"] = str(base / "cache")
    (base / "cache").mkdir()
    if (cache_root() / "accel.json").exists():
        (base / "cache" / "accel.json").write_text((cache_root() / "accel.json").read_text())
    # the session's builds sign their attestations, as a CI job that publishes would (issue 23)
    keys = base / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagebuild tests", "-f",
                    str(keys / "signing")], check=True)
    env["IMAGEBUILD_SIGNING_KEY"] = str(keys / "signing")
    return env


def run_invoke(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, **kw)


@pytest.fixture(scope="session")
def built_debian12(invoke_env):
    """One full `invoke build debian12` for the whole session (the default CI run includes it). It always
    installs and boot-tests for real (--rebuild install: a warm stage cache on a developer's machine
    must not turn it into a copy), and leaves its stages in the cache for the stage-cache tests."""
    res = run_invoke(["build", "debian12", "--rebuild", "install"], invoke_env, timeout=3600)
    print(res.stdout[-5000:], res.stderr[-20000:])
    assert res.returncode == 0, f"build failed ({res.returncode}):\n{res.stderr[-8000:]}"
    return Path(invoke_env["IMAGEBUILD_OUTPUT"]) / "debian12"

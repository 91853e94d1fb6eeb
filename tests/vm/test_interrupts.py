"""Interrupts and kills at real stages leave nothing behind: no domain, no qemu, no mount, no scratch
dir, no file under a final artifact name. Each test runs `invoke` as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagebuild.procs import processes_mentioning
from imagebuild.workspace import DOMAIN_PREFIX, memory_available, mounts_below, scratch_plan

from ..conftest import ROOT, run_invoke

pytestmark = pytest.mark.vm


STARTED: list[subprocess.Popen[str]] = []


def start_invoke(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    STARTED.append(p)
    return p


@pytest.fixture(autouse=True)
def _no_build_outlives_its_test():
    """A test that fails before it interrupts its build would leave that build running into the next
    test (whose checks then see its guests): interrupted here, as a user's Ctrl-C would, and waited for."""
    yield
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def our_domains(prefix: str) -> list[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=True,
                         capture_output=True, text=True).stdout.split()
    return [d for d in out if d.startswith(prefix)]


def loops_below(work: Path) -> list[str]:
    """Loop devices whose backing file lies under ``work`` (grub on the host attaches the disk)."""
    out = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], check=True,
                         capture_output=True, text=True).stdout
    return [d["name"] for d in json.loads(out or "{}").get("loopdevices", [])
            if (d.get("back-file") or "").startswith(str(work.resolve()))]


def assert_nothing_left(env: dict[str, str], recipe: str) -> None:
    work, out = Path(env["IMAGEBUILD_WORK"]), Path(env["IMAGEBUILD_OUTPUT"])
    assert our_domains(DOMAIN_PREFIX + recipe) == []
    assert processes_mentioning(str(work)) == []
    assert mounts_below(work) == [] if work.exists() else True
    assert loops_below(work) == []
    assert not work.exists() or list(work.iterdir()) == [], list(work.iterdir())
    assert not list(out.glob(".tmp-*")) if out.exists() else True
    assert not (out / recipe / f"{recipe}.qcow2").exists()


@pytest.fixture
def fresh_env(tmp_path):
    env = dict(os.environ)
    env["IMAGEBUILD_OUTPUT"] = str(tmp_path / "output")
    env["IMAGEBUILD_WORK"] = str(tmp_path / "work")
    return env


def _wait_for_mmdebstrap(env: dict[str, str]) -> None:
    work = Path(env["IMAGEBUILD_WORK"])
    wait_for(lambda: any("mmdebstrap" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                         for p in processes_mentioning(str(work)) if Path(f"/proc/{p}").exists()),
             120, "mmdebstrap to start")
    time.sleep(5)  # let it get into package extraction, where it has mounts and files open


def _wait_for_the_initramfs_beside(env: dict[str, str]) -> None:
    """Until mkinitramfs runs in the background while mmdebstrap installs the other packages
    (install/initramfs_beside.py): a process the hooks started, in the tree's chroot and mounts. Looked
    for as soon as it starts: with the "virtual" module set it runs for a few seconds only."""
    work = Path(env["IMAGEBUILD_WORK"])
    wait_for(lambda: any(work.glob("*/initramfs-beside/started")), 300, "the initramfs to start beside the packages")

    def mkinitramfs() -> bool:
        try:
            return any("mkinitramfs" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
                       for p in processes_mentioning("/boot/initrd.img-"))
        except OSError:  # a process gone between the listing and the read
            return False
    wait_for(mkinitramfs, 30, "mkinitramfs beside the packages")


@pytest.mark.parametrize(("sig", "moment"), [(signal.SIGTERM, "extracting"), (signal.SIGINT, "initramfs")])
def test_signal_during_install_cleans_up(fresh_env, sig, moment):
    p = start_invoke(["build", "debian12", "--rebuild", "install"], fresh_env)  # never the cached install
    if moment == "initramfs":
        _wait_for_the_initramfs_beside(fresh_env)
    else:
        _wait_for_mmdebstrap(fresh_env)
    t = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    assert time.monotonic() - t < 30
    assert "interrupted by" in err
    assert_nothing_left(fresh_env, "debian12")
    # chrooted, the background update-initramfs names no work dir: asked for by what it runs
    assert processes_mentioning("/boot/initrd.img-") == processes_mentioning("update-initramfs") == []
    failed = list((Path(fresh_env["IMAGEBUILD_OUTPUT"]) / "failed").glob("debian12-*/build.log"))
    assert len(failed) == 1 and "mmdebstrap" in failed[0].read_text()


def test_killed_build_is_cleaned_by_the_next_clean(fresh_env):
    # where this host puts the build's work dir (a tmpfs when its memory allows: workspace.scratch_plan)
    plan = scratch_plan(3, setting="auto", keep_work=False, available=memory_available())
    p = start_invoke(["build", "debian12", "--rebuild", "install"], fresh_env)  # never the cached install
    _wait_for_mmdebstrap(fresh_env)
    p.kill()  # SIGKILL: nothing runs in-process; children get SIGTERM via PR_SET_PDEATHSIG
    p.communicate(timeout=30)
    work = Path(fresh_env["IMAGEBUILD_WORK"])
    assert list(work.iterdir()), "a killed build leaves its work dir for `clean` to find"
    if plan.tmpfs_bytes:  # and its tmpfs, still mounted, holding the tree mmdebstrap was writing
        (left,) = list(work.iterdir())
        assert mounts_below(work) == [str(left.resolve())]
        assert any(f.name == "rootfs" for f in left.iterdir())
    wait_for(lambda: processes_mentioning(str(work)) == [], 60, "the build's children to exit")
    res = run_invoke(["clean"], fresh_env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "work dir" in res.stderr and "removed" in res.stdout
    assert_nothing_left(fresh_env, "debian12")
    again = run_invoke(["clean"], fresh_env, timeout=120)
    assert again.returncode == 0 and "removed 0 leftover(s)" in again.stdout


def test_sigint_during_boot_test_destroys_the_domain(built_debian12, fresh_env):
    image = built_debian12 / "debian12.qcow2"
    before = image.stat().st_mtime_ns
    p = start_invoke(["boot-test", str(image)], fresh_env)
    wait_for(lambda: our_domains(DOMAIN_PREFIX + "debian12-boottest"), 120, "the boot-test domain")
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert our_domains(DOMAIN_PREFIX + "debian12-boottest") == []
    assert_nothing_left(fresh_env, "debian12-boottest")
    assert image.stat().st_mtime_ns == before


def test_sigint_during_the_boot_test_stops_the_compression_beside_it(built_debian12, invoke_env, tmp_path):
    """In a build, the cells boot the uncompressed disk while it is compressed (in the build's own threads,
    recompress): an interrupt then stops both, and leaves no domain, no process, no partial artifact and
    no staging dir."""
    env = dict(invoke_env, IMAGEBUILD_OUTPUT=str(tmp_path / "output"), IMAGEBUILD_WORK=str(tmp_path / "work"))
    p = start_invoke(["build", "debian12", "--rebuild", "customize"], env)  # the session's install, reused
    partial = ".debian12.qcow2.partial"
    wait_for(lambda: our_domains(DOMAIN_PREFIX + "debian12")
             and list(Path(env["IMAGEBUILD_OUTPUT"]).glob(f".tmp-*/{partial}")), 900,
             "a boot-test domain beside the compression")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert processes_mentioning(partial) == []
    assert_nothing_left(env, "debian12")
    assert not list(Path(env["IMAGEBUILD_OUTPUT"]).rglob("*.partial"))


def test_boot_test_task_runs_one_cell_as_a_second_clone(built_debian12, fresh_env):
    res = run_invoke(["boot-test", str(built_debian12 / "debian12.qcow2"), "--firmware", "uefi"], fresh_env,
                     timeout=900)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    (cell,) = result["cells"]
    assert result["passed"] and cell["cell"] == "uefi/q35" and all(c["ok"] for c in cell["checks"])
    # a second clone of the same image: a different MAC, machine-id and host keys than the build's own
    # uefi/q35 cell
    m = json.loads((built_debian12 / "manifest.json").read_text())
    built = next(c for c in m["boot_test"]["cells"] if c["cell"] == "uefi/q35")
    first = {c["name"]: c["detail"] for c in built["checks"]}
    second = {c["name"]: c["detail"] for c in cell["checks"]}
    assert cell["mac"] != built["mac"]
    assert first["machine-id"] != second["machine-id"]
    assert first["ssh-hostkeys"].split(";")[1] != second["ssh-hostkeys"].split(";")[1]  # fingerprints

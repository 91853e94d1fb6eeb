"""The full tier: one real `invoke build debian12` (install → customize → sparsify → boot test), then
assertions on what a user gets, read independently of the pipeline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imagebuild.guest import open_guest

pytestmark = pytest.mark.build


def test_output_files_and_checksums(built_debian12):
    names = {p.name for p in built_debian12.iterdir()}
    assert {"debian12.qcow2", "manifest.json", "SHA256SUMS", "boot-console.log", "build.log",
            "events.jsonl"} <= names
    assert not [n for n in names if n.endswith(".partial")]
    subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=built_debian12, check=True)
    assert not list(built_debian12.parent.glob(".tmp-*"))


def test_artifact_is_a_clean_compressed_qcow2(built_debian12):
    img = built_debian12 / "debian12.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(img)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["format-specific"]["data"]["compat"] == "1.1"
    assert "backing-filename" not in info
    assert info["virtual-size"] == 3 * 1024**3
    assert info["actual-size"] < 500 * 1024**2  # dib makes 353 MiB of the same system
    subprocess.run(["qemu-img", "check", "-f", "qcow2", str(img)], check=True, capture_output=True)


def test_manifest_records_what_was_built_and_proven(built_debian12, accel):
    m = json.loads((built_debian12 / "manifest.json").read_text())
    assert m["schema"] == 1 and m["recipe"]["name"] == "debian12"
    assert m["accelerator"] == str(accel.accel) and m["boot_test"]["accelerator"] == str(accel.accel)
    assert m["boot_test"]["passed"] is True
    checks = {c["name"]: c for c in m["boot_test"]["checks"]}
    assert set(checks) == {"multi-user", "fresh-mac", "dhcp", "single-root", "no-swap", "packages",
                           "machine-id", "ssh-hostkeys"}
    assert all(c["ok"] for c in checks.values())
    assert m["boot_test"]["mac"] in checks["fresh-mac"]["detail"]
    assert set(m["stages"]) == {"install", "customize", "sparsify", "boot-test"}
    assert all(v > 0 for v in m["stages"].values())
    art = m["artifact"]
    assert art["sha256"] in (built_debian12 / "SHA256SUMS").read_text()
    assert art["file_size"] == (built_debian12 / "debian12.qcow2").stat().st_size
    pkgs = m["inputs"]["packages"]
    for p in ("net-tools", "lrzsz", "screen", "tree", "vim", "wget", "qemu-guest-agent", "linux-image-amd64"):
        assert pkgs.get(p), p
    assert m["inputs"]["suite"] == "bookworm" and m["inputs"]["mirror"].startswith("http")
    # the host's package cache holds exactly this system's .debs, as apt names them
    cache = m["inputs"]["package_cache"]
    debs = {p.name for p in Path(cache["dir"]).glob("*.deb")}
    assert cache["packages"] == len(debs) == len(pkgs)
    for name, version in pkgs.items():
        assert any(d.startswith(f"{name}_{version.replace(':', '%3a')}_") for d in debs), (name, version)
    assert {"qemu-img", "libguestfs", "libvirt"} <= set(m["tools"])


def test_console_log_shows_a_login_prompt(built_debian12):
    log = (built_debian12 / "boot-console.log").read_text(errors="replace")
    assert "login:" in log


def test_finished_image_is_generalized(built_debian12, accel):
    """Read the artifact itself (read-only), not the pipeline's word for it."""
    with open_guest(built_debian12 / "debian12.qcow2", "qcow2", accel=accel.accel, readonly=True) as guest:
        g = guest.g
        assert g.part_get_parttype("/dev/sda") == "msdos"
        assert g.list_partitions() == ["/dev/sda1"]
        assert g.vfs_type("/dev/sda1") == "ext4"
        assert guest.read("/etc/machine-id") == ""
        assert [k for k in g.ls("/etc/ssh") if k.startswith("ssh_host_")] == []
        fstab = [ln.split() for ln in guest.read("/etc/fstab").splitlines() if ln and not ln.startswith("#")]
        assert fstab == [[f"UUID={g.vfs_uuid('/dev/sda1')}", "/", "ext4", "errors=remount-ro", "0", "1"]]
        assert guest.read("/etc/hostname").strip() == "localhost"
        assert g.is_symlink("/etc/resolv.conf")
        assert "console=ttyS0" in guest.read("/boot/grub/grub.cfg")
        logs = [f for f in guest.find_files("/var/log") if g.filesize(f) > 0]
        assert logs == []
        assert not g.exists("/root/.bash_history")
        assert g.ls("/tmp") == [] and g.ls("/var/lib/apt/lists") in ([], ["auxfiles", "lock", "partial"],
                                                                      ["lock", "partial"])


def test_nothing_left_behind(built_debian12, invoke_env):
    from imagebuild.workspace import DOMAIN_PREFIX
    doms = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=True,
                          capture_output=True, text=True).stdout.split()
    assert not [d for d in doms if d.startswith(DOMAIN_PREFIX + "debian12")]
    work = Path(invoke_env["IMAGEBUILD_WORK"])
    assert not work.exists() or list(work.iterdir()) == []

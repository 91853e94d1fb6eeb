"""The full tier: one real `invoke build debian12` (install → customize → sparsify → boot test), then
assertions on what a user gets, read independently of the pipeline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.appliance import open_guest
from imagebuild.customize.hotplug import CLOUD_DISK_DRIVERS
from imagebuild.disklayout import GPT_TYPE, Role
from imagebuild.initramfs_files import initramfs_names
from imagebuild.install import initramfs
from imagebuild.recipe import Firmware

pytestmark = pytest.mark.build
CELLS = ("bios-pc", "bios-q35", "uefi-q35", "secure-boot-q35")


def test_output_files_and_checksums(built_debian12):
    names = {p.name for p in built_debian12.iterdir()}
    assert {"debian12.qcow2", "manifest.json", "SHA256SUMS", "build.log", "events.jsonl",
            *(f"boot-console-{c}.log" for c in CELLS)} <= names
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
    # where the work dir was (workspace.scratch_plan), as the log said when the build began
    assert m["scratch"] in ("tmpfs", "disk")
    assert re.search(rf"scratch space: \S+ on {m['scratch']} \(", (built_debian12 / "build.log").read_text())
    cells = m["boot_test"]["cells"]
    assert [c["cell"] for c in cells] == ["bios/pc", "bios/q35", "uefi/q35", "secure-boot/q35"]
    macs = set()
    # every seed kind a cloud sends has a cell: Nova's and oVirt's config drives, NoCloud, and none at all
    assert [c["seed"] for c in cells] == ["nova", "ovirt", "nocloud", "none"]
    system = {"multi-user", "firmware", "machine", "fresh-mac", "dhcp", "single-root", "no-swap", "packages",
              "machine-id", "ssh-hostkeys", "virtio", "balloon", "memory-hotplug", "vcpu-hotplug", "fsfreeze",
              "cloud-init-status", "root-grown"}
    seeded = {"datasource", "hostname", "user-data", "ssh-login", "sudo", "password-login"}
    for cell in cells:
        checks = {c["name"]: c for c in cell["checks"]}
        want = system | (seeded if cell["seed"] != "none" else set()) | ({"second-boot"} if cell["seed"] == "nova"
                                                                          else set())
        assert set(checks) == want, cell["cell"]
        assert cell["passed"] and all(c["ok"] for c in checks.values()), cell
        # the cloud contract, read for real: / grew into the 8 GiB disk in every cell, seed or none
        assert "on a 8 GiB disk" in checks["root-grown"]["detail"]
        if cell["seed"] == "none":
            assert "no seed: status disabled" in checks["cloud-init-status"]["detail"]
        else:
            assert checks["cloud-init-status"]["detail"].startswith("status done, 0 error(s), 0 traceback(s)")
            assert checks["ssh-login"]["detail"].startswith("logged in as debian with the seed's key")
            assert 0 < cell["facts"]["seconds_to_ssh_banner"] <= cell["facts"]["seconds_to_login"] < cell["seconds"]
            assert set(cell["facts"]["cloud_init_stages"]) >= {"init-local", "init-network", "modules-config",
                                                               "modules-final"}
            ds = {"nova": "ConfigDrive", "ovirt": "ConfigDrive", "nocloud": "NoCloud"}[cell["seed"]]
            assert f"datasource DataSource{ds}" in checks["datasource"]["detail"]
            offered = "password login on, on wanted" if cell["seed"] == "ovirt" else "password login off, off wanted"
            assert offered in checks["password-login"]["detail"]
        if cell["seed"] == "nova":
            assert "runcmd ran 1 time(s) in two boots" in checks["second-boot"]["detail"]
            assert "(unchanged)" in checks["second-boot"]["detail"]
        # the live operations, read inside the guest (docs/live-operations.md)
        assert "MemTotal" in checks["balloon"]["detail"] and "back to" in checks["balloon"]["detail"]
        assert "new blocks online in zone Movable" in checks["memory-hotplug"]["detail"]
        bus = {"virtio": "virtio_blk", "scsi": "virtio_scsi"}[cell["disk_bus"]]
        assert f"root disk on {bus}" in checks["virtio"]["detail"]
        if cell["firmware"] == "secure-boot" and cell["accelerator"] == "tcg":
            assert checks["vcpu-hotplug"].get("skipped") and "SMM" in checks["vcpu-hotplug"]["detail"]
        else:
            assert not checks["vcpu-hotplug"].get("skipped") and " online after " in checks["vcpu-hotplug"]["detail"]
        assert cell["mac"] in checks["fresh-mac"]["detail"] and cell["accelerator"] == str(accel.accel)
        assert 0 < cell["seconds_to_agent"] < cell["seconds"]
        macs.add(cell["mac"])
        # each cell proved it booted the way it claims, from inside the guest
        fw = checks["firmware"]["detail"]
        assert {"bios": "booted through BIOS", "uefi": "Secure Boot off",
                "secure-boot": "Secure Boot enforcing"}[cell["firmware"]] in fw, fw
        assert {"pc": "i440FX", "q35": "Q35"}[cell["machine"]] in checks["machine"]["detail"]
    assert len(macs) == len(cells)  # a fresh MAC per cell
    # each clone made its own SSH host keys
    assert [(c["name"], c["ok"]) for c in m["boot_test"]["matrix_checks"]] == [("distinct-host-keys", True)]
    assert {c["disk_bus"] for c in cells} == {"virtio", "scsi"}  # both buses, in alternate cells
    assert m["inputs"]["disk_layout"]["label"] == "gpt"
    assert set(m["stages"]) == {"install", "customize", "sparsify", "boot-test"}
    assert all(v > 0 for v in m["stages"].values())
    # the cells booted the uncompressed disk while it was compressed; the compare proved the artifact
    assert m["stages_beside"] == {"sparsify": "boot-test"}
    log = (built_debian12 / "build.log").read_text()
    assert "debian12.qcow2 holds the guest data of disk.raw, every cluster compared" in log
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


def test_console_logs_show_a_login_prompt_in_every_cell(built_debian12):
    for cell in CELLS:
        log = (built_debian12 / f"boot-console-{cell}.log").read_text(errors="replace")
        assert "login:" in log, cell
    # the nova cell booted its clone twice: both boots' consoles are kept, one after the other
    first, _, second = (built_debian12 / "boot-console-bios-pc.log").read_text(errors="replace").partition(
        "--- second boot ---")
    # (the second boot is destroyed once its check logged in over SSH, often before getty prints)
    plain = second.replace("\x1b[0;1;39m", "").replace("\x1b[0m", "")
    assert "login:" in first and "Started ssh.service" in plain
    # OVMF's boot manager writes to the serial console on the UEFI cells; SeaBIOS writes nothing there
    for cell in CELLS:
        log = (built_debian12 / f"boot-console-{cell}.log").read_text(errors="replace")
        assert ("BdsDxe: loading Boot" in log) == (not cell.startswith("bios")), cell


def test_finished_image_is_generalized(built_debian12, accel, tmp_path):
    """Read the artifact itself (read-only), not the pipeline's word for it."""
    with open_guest(built_debian12 / "debian12.qcow2", "qcow2", accel=accel.accel, readonly=True,
                    firmware=Firmware.HYBRID) as guest:
        g = guest.g
        assert g.part_get_parttype("/dev/sda") == "gpt"
        assert g.list_partitions() == ["/dev/sda1", "/dev/sda14", "/dev/sda15"]
        assert [g.vfs_type(p) for p in ("/dev/sda1", "/dev/sda15")] == ["ext4", "vfat"]
        assert g.part_get_gpt_type("/dev/sda", 14) == GPT_TYPE[Role.BIOS_BOOT]
        assert g.part_get_gpt_type("/dev/sda", 15) == GPT_TYPE[Role.ESP]
        # both UEFI boot paths: the distribution's and the removable one a fresh NVRAM boots
        for f in ("/boot/efi/EFI/BOOT/BOOTX64.EFI", "/boot/efi/EFI/debian/shimx64.efi",
                  "/boot/efi/EFI/debian/grubx64.efi"):
            assert g.is_file(f), f
        assert g.exists("/etc/grub.d/enable_cloud")  # grub-cloud-amd64 re-installs both on upgrades
        assert g.is_file("/boot/grub/i386-pc/core.img")  # the BIOS half, embedded in partition 14
        assert guest.read("/etc/machine-id") == ""
        assert [k for k in g.ls("/etc/ssh") if k.startswith("ssh_host_")] == []
        fstab = [ln.split() for ln in guest.read("/etc/fstab").splitlines() if ln and not ln.startswith("#")]
        assert fstab == [[f"UUID={g.vfs_uuid('/dev/sda1')}", "/", "ext4", "errors=remount-ro,x-systemd.growfs", "0",
                          "1"],
                         [f"UUID={g.vfs_uuid('/dev/sda15')}", "/boot/efi", "vfat", "umask=0077,nofail", "0", "2"]]
        assert guest.read("/etc/hostname").strip() == "localhost"
        assert g.is_symlink("/etc/resolv.conf")
        # grub ran on the host through a loop device (install/hostgrub.py): what it wrote names the
        # filesystem by UUID, never a device of the build host
        cfg, root_uuid = guest.read("/boot/grub/grub.cfg"), g.vfs_uuid("/dev/sda1")
        assert "console=ttyS0" in cfg and f"root=UUID={root_uuid} " in cfg
        assert "loop" not in cfg and "root=/dev/" not in cfg
        assert guest.read("/boot/efi/EFI/debian/grub.cfg").startswith(f"search.fs_uuid {root_uuid} root ")
        # the initramfs policy (install/initramfs.py): any local disk's drivers, only paravirtual NICs
        assert guest.read(initramfs.CONF).rstrip().endswith("MODULES=list") and g.is_file(initramfs.HOOK)
        (initrd,) = [f"/boot/{n}" for n in g.ls("/boot") if n.startswith("initrd.img-")]
        g.download(initrd, str(tmp_path / "initrd.img"))
        logs = [f for f in guest.find_files("/var/log") if g.filesize(f) > 0]
        assert logs == []
        assert not g.exists("/root/.bash_history")
        # cloud-init: configured by our drop-in, its units enabled, nothing of a run or a seed in the image,
        # and no default user yet (cloud-init makes it in each clone)
        drop_in = guest.read("/etc/cloud/cloud.cfg.d/95_imagebuild.cfg")
        assert "datasource_list:" in drop_in and "ssh_pwauth: false" in drop_in and "networkd" in drop_in
        assert not g.exists("/var/lib/cloud") or g.ls("/var/lib/cloud") == []
        assert not g.exists("/etc/cloud/cloud-init.disabled")
        assert not [ln for ln in guest.read("/etc/passwd").splitlines() if ln.startswith("debian:")]
        wants = [n for d in g.ls("/etc/systemd/system") if d.endswith(".wants")
                 for n in g.ls(f"/etc/systemd/system/{d}")]
        assert {"cloud-init-local.service", "cloud-init.service", "cloud-config.service",
                "cloud-final.service"} <= set(wants)
        assert g.ls("/tmp") == [] and g.ls("/var/lib/apt/lists") in ([], ["auxfiles", "lock", "partial"],
                                                                      ["lock", "partial"])
    listed = subprocess.run(["lsinitramfs", str(tmp_path / "initrd.img")], check=True, capture_output=True,
                            text=True).stdout
    # the post-check's own reader (initramfs_files) lists the real initramfs as lsinitramfs does
    assert initramfs_names(tmp_path / "initrd.img") == listed.splitlines()
    modules = {ln.rsplit("/", 1)[1].removesuffix(".ko") for ln in listed.splitlines() if ln.endswith(".ko")}
    assert {*CLOUD_DISK_DRIVERS, *initramfs.CLOUD_NICS, "virtio_blk", "virtio_scsi"} <= modules
    # the default policy, "virtual": every hypervisor's disk controllers and a USB keyboard, by name ...
    named = {m.replace("_", "-") for m in (*initramfs.VIRTUAL_DISKS, *initramfs.KEYBOARDS)}
    assert named <= {m.replace("_", "-") for m in modules}
    # ... and neither physical NICs (Debian's "most" only) nor physical HBAs or other root filesystems ("disk")
    assert not {"e1000e", "igb", "r8169", "tg3", "mlx5_core", "lpfc", "qla2xxx", "xfs", "btrfs"} & modules


def test_nothing_left_behind(built_debian12, invoke_env):
    from imagebuild.workspace import DOMAIN_PREFIX
    doms = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=True,
                          capture_output=True, text=True).stdout.split()
    assert not [d for d in doms if d.startswith(DOMAIN_PREFIX + "debian12")]
    work = Path(invoke_env["IMAGEBUILD_WORK"])
    assert not work.exists() or list(work.iterdir()) == []
    loops = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], check=True,
                           capture_output=True, text=True).stdout
    assert str(work) not in loops  # grub on the host detached its loop device


def test_invoke_vm_gives_a_working_ssh_command_and_leaves_nothing(built_debian12, invoke_env, tmp_path):
    """`invoke vm debian12` as a recipe author runs it: a throwaway clone with the author's own key; the
    printed ssh command logs in; Ctrl-C destroys the guest and its overlay."""
    import os
    import re
    import signal
    import time

    from ..conftest import ROOT
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "vm", "debian12", "--key", f"{key}.pub"], cwd=ROOT,
                            env=invoke_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, deadline = "", time.monotonic() + 900
        while "Ctrl-C destroys" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        command = re.search(r"^  (ssh .*)$", out, re.M)
        assert command, out
        argv = command.group(1).split()
        assert argv[argv.index("-i") + 1] == str(key)
        login = None
        for _ in range(30):  # cloud-init may still be adding the key when sshd answers
            login = subprocess.run([*argv, "-o", "BatchMode=yes", "id -un; hostname"], capture_output=True,
                                   text=True, timeout=120)
            if login.returncode == 0:
                break
            time.sleep(3)
        assert login is not None and login.returncode == 0, login.stderr
        assert login.stdout.split()[0] == "debian" and login.stdout.split()[1].startswith("debian12-")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    doms = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=True,
                          capture_output=True, text=True).stdout.split()
    assert not [d for d in doms if "debian12-vm" in d]
    work = Path(invoke_env["IMAGEBUILD_WORK"])
    assert not work.exists() or not [p for p in work.iterdir() if "debian12-vm" in p.name]

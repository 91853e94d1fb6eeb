"""The VM install runner, proven with real guests: the SCRIPTED INSTALLER (tests/vm/standin/, a
stand-in for anaconda; no CentOS media can be reached here) boots from an install tree served on
127.0.0.1, reads the real EL7 base kickstart injected into its initrd, installs Debian 12 onto the
target disk and powers off; the disk then goes through generalize, sparsify and the boot test.
The watchdog tests make the installer hang, crash or power off early."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from imagebuild.recipe import load_recipe

from ..conftest import ROOT, run_invoke
from .standin import build_iso, build_tree
from .test_interrupts import assert_nothing_left, our_domains

CANARY = "Canary-Pw-7f3a9c1e"
SCRIPTED = ROOT / "tests" / "data" / "scripted"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture(scope="session")
def payload(tmp_path_factory):
    """The root tree the stand-in installs (where anaconda would install packages): Debian 12 with the
    debian12 recipe's system and package set, made by mmdebstrap as a tarball."""
    r = load_recipe("debian12")
    out = tmp_path_factory.mktemp("payload") / "rootfs.tar"
    # the stand-in partitions an MBR disk and installs grub for BIOS: the bios layout's boot packages
    from imagebuild.install.bootstrap import BOOT_PACKAGES
    from imagebuild.recipe import Firmware
    pkgs = ",".join(dict.fromkeys(r.install.bootstrap.include + BOOT_PACKAGES[Firmware.BIOS] + r.packages.all))
    b = r.install.bootstrap
    subprocess.run(["unshare", "--mount", "--propagation", "private", "mmdebstrap", "--mode=root",
                    f"--variant={b.variant}", f"--include={pkgs}", b.suite, str(out),
                    f"deb {b.mirror} {b.suite} main", f"deb {b.security_mirror} {b.suite}-security main"],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("tree")
    root = base / "tree"
    pins = build_tree(root, base, None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield {"port": server.server_address[1], "root": root, **pins}
    server.shutdown()


@pytest.fixture
def scripted_env(tmp_path, tree):
    """Environment with a recipe dir for scripted-installer recipes; returns (env, make_recipe)."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    env = dict(os.environ)
    env.update({"IMAGEBUILD_OUTPUT": str(tmp_path / "output"), "IMAGEBUILD_WORK": str(tmp_path / "work"),
                "IMAGEBUILD_RECIPE_PATH": str(recipes), "IMAGEBUILD_TEMPLATE_PATH": str(SCRIPTED),
                "IMAGEBUILD_CACHE": str(tmp_path / "cache"), "IMAGEBUILD_ROOT_PASSWORD": CANARY})
    # the KVM probe's answer is per host boot: share it instead of probing again in the new cache dir
    from imagebuild.paths import cache_root
    if (cache_root() / "accel.json").exists():
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "accel.json").write_text((cache_root() / "accel.json").read_text())

    def make(name: str, *, pre_script: str = "", inactivity: int = 300, tcg_factor: int = 4,
             timeout: int = 3600, iso: tuple[str, str] | None = None, template: str = "scripted.ks.j2",
             syntax: str = "RHEL7") -> str:
        port = tree["port"]
        source = (f'iso_url = "{iso[0]}"\niso_sha256 = "{iso[1]}"' if iso else
                  f'tree_url = "http://127.0.0.1:{port}/"\nkernel_sha256 = "{tree["kernel_sha256"]}"\n'
                  f'initrd_sha256 = "{tree["initrd_sha256"]}"')
        (recipes / f"{name}.toml").write_text(f'''
description = "Debian 12 installed by the SCRIPTED INSTALLER (a stand-in for anaconda)"
version = "12"
[image]
os_distro = "debian"
os_version = "12"
family = "debian"
disk_gib = 3
[install]
backend = "vm"
[install.vm]
template = "{template}"
kickstart_syntax = "{syntax}"
{source}
memory_mib = 1024
inactivity_seconds = {inactivity}
timeout_seconds = {timeout}
[install.vm.variables]
payload_url = "http://10.0.2.2:{port}"
appstream_url = "http://10.0.2.2:{port}/"
pre_script = {json.dumps(pre_script)}
lang = "en_US.UTF-8"
keymap = "us"
timezone = "UTC"
disk = "vda"
root_fstype = "ext4"
kernel_append = ""
[packages]
extra = ["qemu-guest-agent"]
[boot_test]
tcg_factor = {tcg_factor}
matrix = ["bios/pc"]   # the install path is what these tests prove; debian12's build runs the full matrix
''')
        return name

    return env, make


def _failed_dir(env: dict[str, str], recipe: str) -> Path:
    dirs = sorted((Path(env["IMAGEBUILD_OUTPUT"]) / "failed").glob(f"{recipe}-*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.build
def test_scripted_install_end_to_end(scripted_env, tree, payload):
    env, make = scripted_env
    (tree["root"] / "rootfs.tar").unlink(missing_ok=True)
    (tree["root"] / "rootfs.tar").symlink_to(payload)
    name = make("scripted-debian12")
    res = run_invoke(["build", name], env, timeout=3600)
    assert res.returncode == 0, res.stderr[-6000:]
    out = Path(env["IMAGEBUILD_OUTPUT"]) / name
    m = json.loads((out / "manifest.json").read_text())
    (cell,) = m["boot_test"]["cells"]
    assert m["boot_test"]["passed"] and cell["cell"] == "bios/pc" and all(c["ok"] for c in cell["checks"])
    assert m["inputs"]["answer_file"] == "ks.cfg" and m["inputs"]["install_seconds"] > 0
    assert set(m["stages"]) == {"install", "customize", "sparsify", "boot-test"}
    # the secret: never in the logs, the manifest, the event stream or the image's bytes
    for f in ("build.log", "manifest.json", "events.jsonl", "boot-console-bios-pc.log"):
        assert CANARY not in (out / f).read_text(errors="replace"), f
    assert CANARY not in res.stdout + res.stderr
    raw = Path(env["IMAGEBUILD_WORK"]).parent / "image.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out / f"{name}.qcow2"), str(raw)],
                   check=True)
    needle = CANARY.encode()
    with open(raw, "rb") as f:
        prev = b""
        while chunk := f.read(64 << 20):
            assert needle not in prev[-len(needle):] + chunk
            prev = chunk
    raw.unlink()
    # the installer's leftovers were generalized away, the crypted password stayed
    from imagebuild.accel import choose_accel
    from imagebuild.appliance import open_guest
    with open_guest(out / f"{name}.qcow2", "qcow2", accel=choose_accel().accel, readonly=True) as guest:
        for gone in ("/root/anaconda-ks.cfg", "/root/original-ks.cfg", "/imagebuild-install-complete"):
            assert not guest.lexists(gone), gone
        shadow = guest.read("/etc/shadow").splitlines()
        assert [ln for ln in shadow if ln.startswith("root:$6$")], "rootpw --iscrypted was not applied"
    assert our_domains("imagebuild-" + name) == []


@pytest.mark.build
def test_scripted_install_of_the_el9_kickstart_end_to_end(scripted_env, tree, payload):
    """The RHEL9 base kickstart (kickstart/el9-base.ks.j2: no `install`, `authselect`, an AppStream
    repo) drives the stand-in, which refuses EL7-only commands in a RHEL9 kickstart as anaconda
    does, through the same install path as EL7: inst.ks=file:/ks.cfg, inst.repo= on the command line."""
    env, make = scripted_env
    (tree["root"] / "rootfs.tar").unlink(missing_ok=True)
    (tree["root"] / "rootfs.tar").symlink_to(payload)
    name = make("scripted-el9", template="scripted-el9.ks.j2", syntax="RHEL9")
    res = run_invoke(["build", name], env, timeout=3600)
    assert res.returncode == 0, res.stderr[-6000:]
    out = Path(env["IMAGEBUILD_OUTPUT"]) / name
    m = json.loads((out / "manifest.json").read_text())
    (cell,) = m["boot_test"]["cells"]
    assert m["boot_test"]["passed"] and all(c["ok"] for c in cell["checks"])
    log = (out / "build.log").read_text(errors="replace")
    assert "Kickstart syntax: RHEL9" in log and "inst.repo=http://127.0.0.1:" in log
    assert "inst.ks=file:/ks.cfg" in log and "was removed in RHEL9" not in log
    assert our_domains("imagebuild-" + name) == []


@pytest.mark.vm
def test_hang_is_stopped_by_the_inactivity_timeout(scripted_env):
    env, make = scripted_env
    name = make("scripted-hang", pre_script="sleep 100000", inactivity=30, tcg_factor=1)
    t = time.monotonic()
    res = run_invoke(["build", name], env, timeout=600)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "install hung: no disk I/O and no installer output for 30s" in res.stderr
    assert time.monotonic() - t < 240
    failed = _failed_dir(env, name)
    assert "Running kickstart %pre script" in (failed / "install-console.log").read_text(errors="replace")
    assert (failed / "install-screenshot.ppm").stat().st_size > 0
    assert_nothing_left(env, name)


@pytest.mark.vm
def test_endless_activity_is_stopped_by_the_absolute_timeout(scripted_env):
    env, make = scripted_env
    # The absolute limit must outlast the guest's start, or the test proves nothing: under TCG on a
    # loaded or cold machine the first console byte has come after more than 50 s (CI, 2026-12-01: a
    # 60 s limit ended three guests before their kernels printed). 150 s leaves that start and then
    # over 60 s of output every 2 s, twice the 30 s inactivity limit that must not fire.
    name = make("scripted-busy", pre_script="while true; do echo still working; sleep 2; done",
                inactivity=30, timeout=150, tcg_factor=1)
    t = time.monotonic()
    res = run_invoke(["build", name], env, timeout=600)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "install did not finish within 150s (install.vm.timeout_seconds); console: first output after" \
        in res.stderr
    assert time.monotonic() - t < 400
    console = (_failed_dir(env, name) / "install-console.log").read_text(errors="replace")
    first = int(res.stderr.split("console: first output after ")[1].split("s", 1)[0])
    # busy for longer than the inactivity limit: at least (150 - start - slack) / 2 lines of output
    assert console.count("still working") >= (150 - first - 40) // 2 > 15, (first, console[-2000:])
    assert_nothing_left(env, name)


@pytest.mark.vm
def test_fatal_installer_line_stops_the_install_within_seconds(scripted_env):
    env, make = scripted_env
    name = make("scripted-crash", pre_script='echo "Traceback (most recent call last):"; sleep 100000',
                inactivity=600, tcg_factor=1)
    t = time.monotonic()
    res = run_invoke(["build", name], env, timeout=600)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "install failed: the installer crashed: 'Traceback (most recent call last):'" in res.stderr
    assert time.monotonic() - t < 200  # boot under TCG plus seconds; far below the 600 s inactivity limit
    assert_nothing_left(env, name)


@pytest.mark.vm
def test_early_poweroff_is_a_failed_install(scripted_env):
    env, make = scripted_env
    name = make("scripted-early", pre_script="poweroff -f", inactivity=300, tcg_factor=1)
    res = run_invoke(["build", name], env, timeout=600)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "powered off after" in res.stderr and "without printing the completion marker" in res.stderr
    console = (_failed_dir(env, name) / "install-console.log").read_text(errors="replace")
    assert "Running kickstart %pre script" in console  # it really got that far, then powered off
    assert_nothing_left(env, name)
    assert not (Path(env["IMAGEBUILD_OUTPUT"]) / name).exists()


@pytest.mark.build
@pytest.mark.matrix  # another medium for the same installer: no room in the default run (46 min in a slow hour)
def test_scripted_install_from_an_iso(scripted_env, tree, payload):
    """The installer boots the kernel and initrd read out of a pinned ISO and installs from the same
    ISO attached as its CD-ROM (kickstart `cdrom`, `inst.repo=cdrom`), with no install tree at all."""
    env, make = scripted_env
    iso = tree["root"] / "standin-dvd.iso"
    if not iso.exists():
        tree["iso_sha256"] = build_iso(iso, tree["root"], payload)
    name = make("scripted-iso", iso=(f"http://127.0.0.1:{tree['port']}/{iso.name}", tree["iso_sha256"]))
    res = run_invoke(["build", name], env, timeout=3600)
    assert res.returncode == 0, res.stderr[-6000:]
    out = Path(env["IMAGEBUILD_OUTPUT"]) / name
    m = json.loads((out / "manifest.json").read_text())
    assert m["boot_test"]["passed"]
    assert m["inputs"]["iso_sha256"] == tree["iso_sha256"] and m["inputs"]["tree_url"] == ""
    assert m["inputs"]["kernel"].endswith("standin-dvd.iso!/images/pxeboot/vmlinuz")
    log = (out / "build.log").read_text(errors="replace")
    assert "Installing software from cdrom" in log and "inst.repo=cdrom" in log
    assert our_domains("imagebuild-" + name) == []

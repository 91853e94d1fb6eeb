"""Every customize step on a tiny tree, through DirGuest (imagebuild/dirguest.py): the phony guest of the
libguestfs tier, in milliseconds. Each step's check must see its markers before it runs and nothing
after, the step must be idempotent, and the tree is then read on the host, not through DirGuest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagebuild.customize import StepContext, customize, post_check, selected_steps
from imagebuild.dirguest import DirGuest
from imagebuild.errors import CustomizeFailed

from ..phony import MAC, MARKED, NM_UUID, RECIPE, make_tree

pytestmark = pytest.mark.unit
# Steps that run programs inside the image: the libguestfs tier and the full build test them.
NEEDS_PROGRAMS = {"hotplug"}
STEPS = [s for s in selected_steps(RECIPE) if s.name not in NEEDS_PROGRAMS]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_tree(root, {**MARKED, "/etc/fstab": MARKED["/etc/fstab"].replace("@ROOT@", "1234-abcd")},
              symlinks={"/etc/resolv.conf.link": "/run/systemd/resolve/stub-resolv.conf"})
    return root


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_each_step_alone(tree: Path, step) -> None:
    guest = DirGuest(tree)
    ctx = StepContext(RECIPE, network=False)
    before = step.check(guest, ctx)
    step.run(guest, ctx)
    assert step.check(guest, ctx) == [], step.name
    step.run(guest, ctx)  # idempotent
    assert step.check(guest, ctx) == [], step.name
    if step.name not in ("packages", "ssh-hostkeys", "hostname", "resolv-conf") or before:
        assert before, f"{step.name}: its check saw nothing to do in the marked tree"


def test_all_steps_then_read_the_tree_on_the_host(tree: Path) -> None:
    guest = DirGuest(tree)
    ctx = StepContext(RECIPE, network=False)
    with pytest.raises(CustomizeFailed, match="machine-id: /etc/machine-id is not empty"):
        post_check(guest, ctx, [s for s in STEPS if s.name == "machine-id"])
    customize(guest, ctx, STEPS)
    post_check(guest, ctx, STEPS)
    assert (tree / "etc/machine-id").read_text() == ""
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    ifcfg = (tree / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text()
    assert "HWADDR" not in ifcfg and NM_UUID not in ifcfg and "BOOTPROTO=dhcp" in ifcfg
    assert MAC.upper() not in (tree / "etc/NetworkManager/system-connections/eth0.nmconnection").read_text()
    assert not (tree / "swapfile").exists() and "swap" not in (tree / "etc/fstab").read_text()
    assert not (tree / "root/anaconda-ks.cfg").exists() and not (tree / "root/.bash_history").exists()
    assert not (tree / "etc/dpkg/dpkg.cfg.d/99mmdebstrap").exists()   # dpkg's fsync back on
    assert os.listdir(tree / "tmp") == [] and (tree / "var/log/syslog").read_text() == ""


def test_dirguest_keeps_symlinks_inside_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, {"/etc/real": "x"}, symlinks={"/etc/abs": "/etc/real", "/etc/escape": "../../../../etc/passwd"})
    g = DirGuest(root)
    assert g.read("/etc/abs") == "x" and g.is_symlink("/etc/abs") and not g.is_file("/etc/abs")
    assert not g.exists("/etc/escape")  # resolves to <root>/etc/passwd, which the tree does not have
    with pytest.raises(CustomizeFailed, match="runs no programs"):
        g.command(["true"])

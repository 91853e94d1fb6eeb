"""The cloud steps through the real libguestfs appliance on a phony guest holding cloud-init as its package
installs it (units, a merged /usr) and every leftover of a cloud-init run or a seed; the result is read
back through a fresh read-only open and on the host (debugfs)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from imagebuild.appliance import open_guest
from imagebuild.customize import StepContext, customize, post_check, selected_steps
from imagebuild.customize.cloud import DROP_IN
from imagebuild.errors import CustomizeFailed
from imagebuild.events import Reporter

from ..phony import RECIPE, exists, make_disk, make_tree, read_file
from ..unit.test_cloud_steps import KEPT, LEFTOVERS, UNITS_22_4, installed

pytestmark = pytest.mark.guestfs

CLOUD_STEPS = ("cloud-config", "cloud-init-clean")


def _steps():
    steps = [s for s in selected_steps(RECIPE) if s.name in CLOUD_STEPS]
    assert [s.name for s in steps] == list(CLOUD_STEPS)
    return steps


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("phony-cloud")
    tree = d / "tree"
    files = {**installed(UNITS_22_4), **KEPT, **LEFTOVERS}
    files["/etc/fstab"] = KEPT["/etc/fstab"]
    # merged /usr, and one unit enabled the way Debian's postinst does it (through the /lib path)
    make_tree(tree, files, symlinks={
        "/lib": "usr/lib",
        "/var/lib/cloud/instance": "/var/lib/cloud/instances/iid-123",
        "/etc/systemd/system/cloud-init.target.wants/cloud-init-local.service":
            "/lib/systemd/system/cloud-init-local.service"})
    (tree / "etc/shadow").chmod(0o640)
    disk = d / "pristine.raw"
    make_disk(disk, tree)
    return disk


def test_leftovers_go_the_drop_in_comes_and_the_post_check_passes(pristine, tmp_path, accel):
    disk = tmp_path / "work.raw"
    shutil.copyfile(pristine, disk)
    steps = _steps()
    ctx = StepContext(RECIPE, network=False)
    with open_guest(disk, "raw", accel=accel.accel, reporter=Reporter(), network=False) as guest:
        customize(guest, ctx, steps)

    with open_guest(disk, "raw", accel=accel.accel, readonly=True) as guest:
        post_check(guest, ctx, steps)
        still = [p for p in LEFTOVERS if guest.lexists(p)]
        assert still == []
        assert guest.ls("/var/lib/cloud") == [] and not guest.lexists("/home/debian")
        assert [p for p in KEPT if not guest.lexists(p)] == []
        cfg = yaml.safe_load(guest.read(DROP_IN))
        assert cfg["datasource_list"][-1] == "None" and cfg["system_info"]["default_user"]["name"] == "debian"
        assert guest.is_symlink("/etc/systemd/system/cloud-init.target.wants/cloud-final.service")
        assert "x-systemd.growfs" in guest.read("/etc/fstab")

    # and on the host, without libguestfs
    assert "renderers:\n    - networkd" in (read_file(disk, DROP_IN) or "")
    assert not exists(disk, "/var/lib/cloud/seed") and not exists(disk, "/etc/sudoers.d/90-cloud-init-users")
    assert "debian" not in (read_file(disk, "/etc/passwd") or "debian")
    assert exists(disk, "/etc/cloud/cloud.cfg.d/90_dpkg.cfg")


def test_a_leftover_planted_after_the_steps_fails_the_post_check(pristine, tmp_path, accel):
    disk = tmp_path / "work.raw"
    shutil.copyfile(pristine, disk)
    steps = _steps()
    ctx = StepContext(RECIPE, network=False)
    with open_guest(disk, "raw", accel=accel.accel, network=False) as guest:
        customize(guest, ctx, steps)
        post_check(guest, ctx, steps)
        guest.write("/var/lib/cloud/seed/nocloud/meta-data", "instance-id: late\n")
        guest.write("/etc/systemd/network/10-cloud-init-ens3.network", "[Match]\nName=ens3\n")
        with pytest.raises(CustomizeFailed) as e:
            post_check(guest, ctx, steps)
    msg = str(e.value)
    assert "cloud-init-clean: a seed is baked in: /var/lib/cloud/seed exists" in msg
    assert "cloud-init-clean: /etc/systemd/network/10-cloud-init-ens3.network exists" in msg
    assert "cloud-config:" not in msg

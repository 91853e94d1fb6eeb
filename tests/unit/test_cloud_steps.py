"""The cloud steps (customize/cloud.py) on host trees through DirGuest: the drop-in parsed back as cloud-init
would read it, x-systemd.growfs on /, the units, and every leftover of a cloud-init run or a seed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuild.customize import STEPS, StepContext, all_steps, customize, post_check, selected_steps
from imagebuild.customize.cloud import DROP_IN, add_growfs, drop_in_data, holds_seed, wanted_by
from imagebuild.dirguest import DirGuest
from imagebuild.errors import CustomizeFailed
from imagebuild.recipe import Recipe, load_recipe

from ..phony import make_tree

pytestmark = pytest.mark.unit

DEBIAN12 = load_recipe("debian12")
ROCKY9 = load_recipe("rocky9")
CENTOS7 = load_recipe("centos7")
FSTAB = "# <file system> <mount point> <type> <options> <dump> <pass>\n" \
        "UUID=1234-abcd  /  ext4  errors=remount-ro  0  1\nproc /proc proc defaults 0 0\n"
UNIT = "[Unit]\nDescription={0}\n\n[Service]\nType=oneshot\n\n[Install]\nWantedBy=cloud-init.target\n"
UNITS_22_4 = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service", "cloud-final.service")
UNITS_24_3 = ("cloud-init-local.service", "cloud-init-main.service", "cloud-init-network.service",
              "cloud-config.service", "cloud-final.service")


def step(name: str):
    all_steps()
    return STEPS[name]


def ctx(recipe: Recipe = DEBIAN12) -> StepContext:
    return StepContext(recipe, network=False)


def installed(units: tuple[str, ...] = UNITS_22_4) -> dict[str, str]:
    """cloud-init as its package installs it, units not enabled yet; fstab without growfs."""
    return {"/usr/bin/cloud-init": "#!/usr/bin/python3\n", "/etc/fstab": FSTAB,
            "/etc/cloud/cloud.cfg": "datasource_list: [NoCloud, None]\n",
            "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ NoCloud, ConfigDrive, None ]\n",
            "/etc/cloud/cloud.cfg.d/05_logging.cfg": "_log: []\n",
            "/etc/cloud/cloud.cfg.d/README": "drop-ins\n",
            # cloud-init.target is static (the generator pulls it in)
            "/usr/lib/systemd/system/cloud-init.target": "[Unit]\nDescription=Cloud-init target\n",
            **{f"/usr/lib/systemd/system/{u}": UNIT.format(u) for u in units}}


# -- cloud-config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe,renderer,user,groups,keys", [
    (DEBIAN12, "networkd", "debian", ["adm", "audio", "cdrom", "dialout", "dip", "floppy", "netdev", "plugdev",
                                      "sudo", "video"], ["ecdsa", "ed25519"]),
    (ROCKY9, "network-manager", "rocky", ["adm", "systemd-journal"], ["rsa", "ecdsa", "ed25519"]),
], ids=["debian12", "rocky9"])
def test_the_drop_in_says_what_the_recipe_asks(tmp_path: Path, recipe, renderer, user, groups, keys) -> None:
    make_tree(tmp_path, installed())
    step("cloud-config").run(DirGuest(tmp_path), ctx(recipe))
    text = (tmp_path / DROP_IN.lstrip("/")).read_text()
    assert text.startswith("# Written by imagebuild") and "[cloud]" in text.splitlines()[0]
    cfg = yaml.safe_load(text)
    assert cfg["datasource_list"] == ["NoCloud", "ConfigDrive", "OpenStack", "None"]
    assert cfg["datasource"]["OpenStack"]["max_wait"] <= 10 and cfg["datasource"]["OpenStack"]["retries"] <= 2
    net = cfg["system_info"]["network"]
    assert net == {"renderers": [renderer], "activators": [renderer]}
    assert "network" not in cfg  # top level, it would be the instance's network config
    u = cfg["system_info"]["default_user"]
    assert u["name"] == user and u["lock_passwd"] is True and u["groups"] == groups
    assert u["sudo"] == ["ALL=(ALL) NOPASSWD:ALL"] and u["shell"] == "/bin/bash"
    assert cfg["ssh_pwauth"] is False and cfg["disable_root"] is True and cfg["preserve_hostname"] is False
    # no DSA key (OpenSSH 9 does not load it); on Debian the RSA key is made after sshd starts, by our unit
    assert cfg["ssh_genkeytypes"] == keys
    # deterministic: the same recipe writes the same bytes
    step("cloud-config").run(DirGuest(tmp_path), ctx(recipe))
    assert (tmp_path / DROP_IN.lstrip("/")).read_text() == text
    # it sorts after the package's drop-in, which cloud-init reads first (later files win)
    assert sorted(p.name for p in (tmp_path / "etc/cloud/cloud.cfg.d").glob("*.cfg"))[-1] == "95_imagebuild.cfg"


@pytest.mark.parametrize("name,grub_dpkg", [("debian12", {"enabled": False}), ("debian12-bios", None),
                                             ("rocky9", None)])
def test_grub_dpkg_is_off_where_the_image_has_no_grub_pc(name: str, grub_dpkg) -> None:
    # the hybrid layout's grub-cloud-amd64 finds its disk with grub-probe; grub-pc (bios) reads the
    # debconf answer cloud-init's grub_dpkg writes; EL's cloud-init does not run the module
    assert drop_in_data(load_recipe(name)).get("grub_dpkg") == grub_dpkg


def test_sysconfig_has_no_activator_and_none_goes_last(tmp_path: Path) -> None:
    recipe = dataclasses.replace(CENTOS7, cloud=dataclasses.replace(
        CENTOS7.cloud, datasources=("None", "ConfigDrive", "NoCloud", "OpenStack")))
    make_tree(tmp_path, installed())
    step("cloud-config").run(DirGuest(tmp_path), ctx(recipe))
    cfg = yaml.safe_load((tmp_path / DROP_IN.lstrip("/")).read_text())
    assert cfg["system_info"]["network"] == {"renderers": ["sysconfig"]}
    assert cfg["datasource_list"] == ["ConfigDrive", "NoCloud", "OpenStack", "None"]
    assert cfg["system_info"]["default_user"]["name"] == "centos"
    # centos7: growfs = false, so fstab is left as it is
    assert (tmp_path / "etc/fstab").read_text() == FSTAB


def test_growfs_is_added_once_keeping_the_other_options(tmp_path: Path) -> None:
    make_tree(tmp_path, installed())
    guest = DirGuest(tmp_path)
    step("cloud-config").run(guest, ctx())
    step("cloud-config").run(guest, ctx())
    fstab = (tmp_path / "etc/fstab").read_text()
    assert fstab.count("x-systemd.growfs") == 1
    assert "UUID=1234-abcd  /  ext4  errors=remount-ro,x-systemd.growfs  0  1\n" in fstab
    assert fstab.splitlines()[0].startswith("# <file system>") and "proc /proc proc defaults 0 0\n" in fstab
    assert add_growfs("LABEL=root / ext4\n") == "LABEL=root / ext4\tdefaults,x-systemd.growfs\n"
    assert add_growfs("LABEL=root /srv ext4 defaults 0 2\n") == "LABEL=root /srv ext4 defaults 0 2\n"


@pytest.mark.parametrize("units", [UNITS_22_4, UNITS_24_3], ids=["cloud-init-22.4", "cloud-init-24.3"])
def test_config_check_reports_each_problem_and_none_after_run(tmp_path: Path, units) -> None:
    # one unit enabled the way Debian's postinst may do it, through multi-user.target.wants: accepted
    make_tree(tmp_path, {**installed(units), "/etc/cloud/cloud-init.disabled": ""},
              symlinks={"/etc/systemd/system/multi-user.target.wants/cloud-final.service":
                        "/lib/systemd/system/cloud-final.service"})
    guest = DirGuest(tmp_path)
    s = step("cloud-config")
    before = s.check(guest, ctx())
    text = "\n".join(before)
    assert f"{DROP_IN} is missing" in text
    assert "/etc/fstab:2: / lacks x-systemd.growfs" in text
    assert "cloud-init.disabled exists" in text
    for u in units:
        assert (f"{u} is not enabled" in text) == (u != "cloud-final.service"), u
    s.run(guest, ctx())
    assert s.check(guest, ctx()) == []
    for u in units:
        if u != "cloud-final.service":
            link = tmp_path / "etc/systemd/system/cloud-init.target.wants" / u
            assert link.is_symlink() and str(link.readlink()) == f"/usr/lib/systemd/system/{u}"
    # a drop-in someone edited is named
    (tmp_path / DROP_IN.lstrip("/")).write_text("datasource_list: [NoCloud, None]\n")
    assert s.check(guest, ctx()) == [f"{DROP_IN} differs from what the recipe's [cloud] asks"]


def test_config_check_says_when_cloud_init_is_not_installed(tmp_path: Path) -> None:
    make_tree(tmp_path, {"/etc/fstab": FSTAB})
    guest = DirGuest(tmp_path)
    s = step("cloud-config")
    s.run(guest, ctx())
    assert s.check(guest, ctx()) == ["cloud-init is not installed (/usr/bin/cloud-init missing): cloud.enabled "
                                     "wants it (cloud.packages)"]


def test_wanted_by_reads_the_install_section_only() -> None:
    assert wanted_by("[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=a.target b.target\nWantedBy=c.target\n") \
        == ["a.target", "b.target", "c.target"]
    assert wanted_by("[Unit]\nDescription=x\n") == []


# -- cloud-init-clean -----------------------------------------------------------------------------------
PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n" \
         "debian:x:1001:1001:Debian:/home/debian:/bin/bash\n"
SHADOW = "root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\ndebian:!:19001:0:99999:7:::\n"
GROUP = "root:x:0:\nadm:x:4:alice,debian\nsudo:x:27:debian\nalice:x:1000:\ndebian:x:1001:\n"
GSHADOW = "root:*::\nadm:*::alice,debian\nsudo:*:debian:debian\nalice:!::\ndebian:!::\n"
IFCFG_CLOUD = "# Created by cloud-init automatically, do not edit.\n#\nBOOTPROTO=dhcp\nDEVICE=eth0\n"
LEFTOVERS = {
    "/var/lib/cloud/instances/iid-123/obj.pkl": "pickle",
    "/var/lib/cloud/data/instance-id": "iid-123\n",
    "/var/lib/cloud/sem/config_scripts_per_once.once": "",
    "/var/lib/cloud/seed/nocloud/meta-data": "instance-id: iid-123\n",
    "/var/lib/cloud/seed/nocloud/user-data": "#cloud-config\n",
    "/var/log/cloud-init.log": "log", "/var/log/cloud-init-output.log": "log", "/var/log/cloud-init.log.1": "old",
    "/etc/netplan/50-cloud-init.yaml": "network: {}\n",
    "/etc/systemd/network/10-cloud-init-eth0.network": "[Match]\nName=eth0\n",
    "/etc/network/interfaces.d/50-cloud-init.cfg": "auto eth0\n",
    "/etc/NetworkManager/system-connections/cloud-init-eth0.nmconnection": "[connection]\n",
    "/etc/NetworkManager/conf.d/99-cloud-init.conf": "[main]\n",
    "/etc/NetworkManager/conf.d/30-cloud-init-ip6-addr-gen-mode.conf": "[connection]\n",
    "/etc/sysconfig/network-scripts/ifcfg-eth1": IFCFG_CLOUD,
    "/etc/sysconfig/network-scripts/route-eth1": IFCFG_CLOUD,
    "/etc/ssh/sshd_config.d/50-cloud-init.conf": "PasswordAuthentication no\n",
    "/etc/sudoers.d/90-cloud-init-users": "debian ALL=(ALL) NOPASSWD:ALL\n",
    "/etc/udev/rules.d/90-cloud-init-hook-hotplug.rules": "# hotplug\n",
    "/etc/cloud/cloud-init.disabled": "",
    "/etc/cloud/cloud.cfg.d/99-installer.cfg": "datasource: {None: {userdata_raw: x}}\n",
    "/etc/cloud/cloud.cfg.d/90-installer-network.cfg": "network: {version: 2}\n",
    "/etc/cloud/cloud.cfg.d/90_dpkg_local_cloud_config.cfg": "datasource: {MAAS: {consumer_key: k}}\n",
    "/etc/cloud/cloud.cfg.d/91_kernel_cmdline_url.cfg": "#cloud-config\n",
    "/etc/cloud/cloud.cfg.d/10_nocloud_seed.cfg": "datasource_list: [NoCloud]\n",
    "/etc/cloud/cloud.cfg.d/60_site.cfg": "datasource:\n  NoCloud:\n    seedfrom: http://10.0.0.1/seed/\n",
    "/home/debian/.ssh/authorized_keys": "ssh-ed25519 AAAA build@host\n",
    "/var/mail/debian": "",
}
KEPT = {
    "/etc/passwd": PASSWD, "/etc/shadow": SHADOW, "/etc/group": GROUP, "/etc/gshadow": GSHADOW,
    "/etc/subuid": "alice:100000:65536\ndebian:165536:65536\n",
    "/etc/fstab": FSTAB + "/dev/vdb /mnt auto defaults,nofail,comment=cloudconfig 0 2\n",
    "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ NoCloud, ConfigDrive, None ]\n",
    "/etc/cloud/cloud.cfg.d/05_logging.cfg": "_log: []\n",
    "/etc/cloud/cloud.cfg.d/README": "drop-ins\n",
    "/etc/cloud/cloud.cfg.d/95_imagebuild.cfg": "# Written by imagebuild\n",
    "/etc/cloud/cloud.cfg.d/50_site.cfg": "datasource:\n  OpenStack:\n    timeout: 3\n",
    "/etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nBOOTPROTO=dhcp\n",  # anaconda's
    "/etc/NetworkManager/system-connections/eth0.nmconnection": "[connection]\nid=eth0\n",
    "/etc/systemd/network/80-dhcp.network": "[Match]\nName=en* eth*\n",
    "/home/alice/.profile": "",
    "/var/log/syslog": "",
}


@pytest.fixture
def dirty(tmp_path: Path) -> Path:
    make_tree(tmp_path, {**KEPT, **LEFTOVERS},
              symlinks={"/var/lib/cloud/instance": "/var/lib/cloud/instances/iid-123"})
    (tmp_path / "etc/shadow").chmod(0o640)
    return tmp_path


def test_clean_removes_every_leftover_and_keeps_the_rest(dirty: Path) -> None:
    guest = DirGuest(dirty)
    s = step("cloud-init-clean")
    before = "\n".join(s.check(guest, ctx()))
    for p in LEFTOVERS:
        top = p if not p.startswith("/var/lib/cloud/") else "/var/lib/cloud/" + p.split("/")[4]
        top = "/home/debian" if p.startswith("/home/debian/") else top
        assert top in before, p
    assert "a seed is baked in: /var/lib/cloud/seed exists" in before
    assert "a seed is baked in: /etc/cloud/cloud.cfg.d/60_site.cfg" in before
    assert "default user debian exists in /etc/passwd" in before
    assert "/etc/fstab:4: a mount cloud-init added" in before
    for p in KEPT:
        assert f"{p} exists" not in before, p

    s.run(guest, ctx())
    assert s.check(guest, ctx()) == []
    s.run(guest, ctx())  # idempotent
    assert s.check(guest, ctx()) == []
    for p in LEFTOVERS:
        assert not (dirty / p.lstrip("/")).exists(), p
    assert not (dirty / "var/lib/cloud/instance").is_symlink() and not (dirty / "home/debian").exists()
    assert (dirty / "var/lib/cloud").is_dir() and list((dirty / "var/lib/cloud").iterdir()) == []
    for p in KEPT:
        assert (dirty / p.lstrip("/")).exists(), p
    etc = dirty / "etc"
    assert (etc / "passwd").read_text() == PASSWD.replace("debian:x:1001:1001:Debian:/home/debian:/bin/bash\n", "")
    assert "debian" not in (etc / "shadow").read_text() and (etc / "shadow").stat().st_mode & 0o777 == 0o640
    assert (etc / "group").read_text() == "root:x:0:\nadm:x:4:alice\nsudo:x:27:\nalice:x:1000:\n"
    assert (etc / "gshadow").read_text() == "root:*::\nadm:*::alice\nsudo:*::\nalice:!::\n"
    assert (etc / "subuid").read_text() == "alice:100000:65536\n"
    assert (etc / "fstab").read_text() == FSTAB


def test_clean_check_names_a_seed_baked_into_cloud_cfg(tmp_path: Path) -> None:
    make_tree(tmp_path, {"/etc/cloud/cloud.cfg": "datasource:\n  NoCloud:\n    seedfrom: /srv/seed/\n"})
    assert step("cloud-init-clean").check(DirGuest(tmp_path), ctx()) == [
        "a seed is baked in: /etc/cloud/cloud.cfg holds one (seedfrom or NoCloud meta-data)"]
    assert holds_seed("datasource:\n  NoCloud:\n    meta-data:\n      instance-id: x\n")
    assert not holds_seed("datasource_list: [NoCloud, None]\n")


def test_both_cloud_steps_then_the_post_check(dirty: Path) -> None:
    make_tree(dirty, {k: v for k, v in installed().items() if k != "/etc/fstab"})
    steps = [s for s in selected_steps(DEBIAN12) if s.name in ("cloud-config", "cloud-init-clean")]
    guest: Any = DirGuest(dirty)  # duck-types Guest
    with pytest.raises(CustomizeFailed, match="cloud-init-clean: a seed is baked in: /var/lib/cloud/seed"):
        post_check(guest, ctx(), steps)
    customize(guest, ctx(), steps)
    post_check(guest, ctx(), steps)
    assert "x-systemd.growfs" in (dirty / "etc/fstab").read_text()


# -- selection ------------------------------------------------------------------------------------------
def test_cloud_steps_apply_only_with_cloud_enabled() -> None:
    names = [s.name for s in selected_steps(DEBIAN12)]
    assert names.index("packages") < names.index("cloud-config") < names.index("ssh-hostkeys")
    assert names.index("cloud-init-clean") < names.index("logfiles") < names.index("layout")
    for recipe in (DEBIAN12, ROCKY9):
        off = dataclasses.replace(recipe, cloud=dataclasses.replace(recipe.cloud, enabled=False))
        chosen = {s.name for s in selected_steps(off)}
        assert not chosen & {"cloud-config", "cloud-init-clean"}
        assert chosen == {s.name for s in selected_steps(recipe)} - {"cloud-config", "cloud-init-clean"}
    assert not step("cloud-config").applies_to(dataclasses.replace(
        DEBIAN12, cloud=dataclasses.replace(DEBIAN12.cloud, enabled=False)))

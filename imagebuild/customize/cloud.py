"""cloud-init, when the recipe asks for a cloud image (``[cloud] enabled``): configured by our own drop-in,
its units enabled, and nothing of a cloud-init run or of a seed left in the image (cloud-init's own
``cloudinit/cmd/clean.py`` knows what a run leaves).

- ``cloud-config`` writes ``/etc/cloud/cloud.cfg.d/95_imagebuild.cfg`` from the recipe. Drop-ins merge in
  name order over ``/etc/cloud/cloud.cfg``, later ones winning, so ours (95) overrides the package's
  ``90_dpkg.cfg``. It pins the datasource list (ds-identify then detects among those, ``None`` last),
  keeps the OpenStack datasource from waiting long for a metadata service that is not there, pins the
  network renderer and activator to what the image runs (else cloud-init on Debian would pick networkd
  by elimination and write a ``10-cloud-init-*.network`` that outranks our ``80-dhcp.network``), and
  sets the default user: locked password, passwordless sudo, key-only SSH, no root login.
- ``cloud-init-clean`` removes instance state, seeds, logs, the per-instance files cloud-init
  generates and a default user a cloud-init run created; its check runs in every post-check.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Any

import yaml

from ..guest import Guest
from ..recipe import Family, Firmware, Recipe, Renderer
from . import ssh_hostkeys
from .layout import fstab_entries
from .registry import StepContext, register

DROP_IN = "/etc/cloud/cloud.cfg.d/95_imagebuild.cfg"
CLOUD_INIT = "/usr/bin/cloud-init"
DISABLED = "/etc/cloud/cloud-init.disabled"

# cloud-init's activators (cloudinit/net/activators.py: eni, netplan, network-manager, networkd) by the
# renderer the recipe pins. sysconfig has none of its own: EL7's cloud-init (19.4) predates activators
# (21.3) and brings interfaces up with the initscripts, and cloud-init's "eni" activator is ifupdown's
# (it needs /etc/network/interfaces), so the key is left out there.
ACTIVATORS: dict[Renderer, str | None] = {
    Renderer.NETWORKD: "networkd",
    Renderer.NETWORK_MANAGER: "network-manager",
    Renderer.ENI: "eni",
    Renderer.NETPLAN: "netplan",
    Renderer.SYSCONFIG: None,
}
# The default user's groups and gecos, as each family's own cloud-init package sets them: Debian's
# cloud.cfg (without Ubuntu's lxd), and RHEL's, which Rocky and AlmaLinux rebuild and CentOS 7 shipped
# too (sudo comes from the NOPASSWD rule, not from wheel). cloud-init creates any group that is missing.
USER_GROUPS = {
    Family.DEBIAN: ["adm", "audio", "cdrom", "dialout", "dip", "floppy", "netdev", "plugdev", "sudo", "video"],
    Family.EL: ["adm", "systemd-journal"],
}
USER_GECOS = {Family.DEBIAN: "Debian", Family.EL: "Cloud User"}
# The OpenStack datasource's defaults are one request with a 10 s timeout, then 5 retries per read:
# when ds-identify says "maybe" on a cloud without a metadata service, a boot should not wait for it.
OPENSTACK_WAIT = {"max_wait": 10, "timeout": 5, "retries": 2}

UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system")
# cloud-init's stages; 24.3 (Debian 13) replaced cloud-init.service by cloud-init-main.service (one
# process for all stages) and cloud-init-network.service. Only those the image ships are checked.
UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-init-main.service",
         "cloud-init-network.service", "cloud-config.service", "cloud-final.service")
ETC_UNITS = "/etc/systemd/system"


def wanted(recipe: Recipe) -> bool:
    return recipe.cloud.enabled


def datasource_list(recipe: Recipe) -> list[str]:
    """The recipe's datasources in its order, ``None`` (the fallback: no datasource) last."""
    return [d for d in recipe.cloud.datasources if d != "None"] + ["None"]


def drop_in_data(recipe: Recipe) -> dict[str, Any]:
    family = recipe.image.family
    network: dict[str, Any] = {"renderers": [str(recipe.cloud.renderer)]}
    if (activator := ACTIVATORS[recipe.cloud.renderer]) is not None:
        network["activators"] = [activator]
    system_info: dict[str, Any] = {}
    if recipe.cloud.default_user:  # else the distribution's cloud.cfg names it
        system_info["default_user"] = {
            "name": recipe.cloud.default_user,
            "lock_passwd": True,
            "gecos": USER_GECOS[family],
            "groups": USER_GROUPS[family],
            "sudo": ["ALL=(ALL) NOPASSWD:ALL"],
            "shell": "/bin/bash",
        }
    # renderers and activators are distro settings (system_info.network): a top-level `network:` key
    # would be read as the instance's network configuration instead.
    system_info["network"] = network
    data: dict[str, Any] = {
        "datasource_list": datasource_list(recipe),
        "datasource": {"OpenStack": dict(OPENSTACK_WAIT)},
        "system_info": system_info,
        "ssh_pwauth": False,
        "disable_root": True,
        "preserve_hostname": False,
        # cloud-init 22.4 (Debian 12) also makes a DSA host key, which OpenSSH 9 no longer loads: under
        # emulation its key generation was most of the 12.9 s its ssh module took on the first boot. On
        # Debian the RSA key is made after sshd starts, by a unit of ours (customize/ssh_hostkeys.py).
        "ssh_genkeytypes": list(ssh_hostkeys.EARLY_TYPES) if family is Family.DEBIAN
        else ["rsa", *ssh_hostkeys.EARLY_TYPES],
    }
    if family is Family.DEBIAN and recipe.image.firmware is Firmware.HYBRID:
        # cloud-init's grub_dpkg module writes grub-pc's debconf answer (install_devices) at each
        # instance's first boot: 2.9 s of cloud-config under emulation (debian12, cloud-init analyze). A
        # hybrid image has no grub-pc: its grub-cloud-amd64 (disklayout.BOOT_PACKAGES) finds the disk
        # with grub-probe at each upgrade.
        data["grub_dpkg"] = {"enabled": False}
    if family is Family.DEBIAN and "locales" not in recipe.all_packages:
        # A minbase image has no `locales` package: cloud-init's locale module would run update-locale,
        # which fails there (exit 255, measured on debian12) and fails cloud-config.service with it.
        data["locale"] = False
    return data


def drop_in_text(recipe: Recipe) -> str:
    header = (
        "# Written by imagebuild (customize step cloud-config) from the recipe's [cloud] keys\n"
        "# datasources, renderer and default_user (groups and gecos by image.family).\n"
        "# Sorts after the package's 90_dpkg.cfg, whose datasource_list it overrides. Rewritten at each\n"
        "# build: change the recipe, not this file.\n"
    )
    body = yaml.safe_dump(drop_in_data(recipe), sort_keys=False, default_flow_style=False, width=100)
    return header + body


# -- x-systemd.growfs on / -----------------------------------------------------------------------------
GROWFS = "x-systemd.growfs"
_FIELDS = re.compile(r"^(\s*\S+\s+\S+\s+\S+)(\s+)(\S+)(.*)$", re.S)


def _root_line(text: str) -> tuple[int, list[str]] | None:
    for n, fields in fstab_entries(text):
        if len(fields) >= 2 and fields[1] == "/":
            return n, fields
    return None


def add_growfs(text: str) -> str:
    """fstab text with x-systemd.growfs in the options of its / line (other options and spacing kept)."""
    found = _root_line(text)
    if found is None:
        return text
    n, fields = found
    if len(fields) >= 4 and GROWFS in fields[3].split(","):
        return text
    lines = text.splitlines(keepends=True)
    line = lines[n - 1]
    end = line[len(line.rstrip("\r\n")):]
    body = line[:len(line) - len(end)]
    if m := _FIELDS.match(body):
        body = m.group(1) + m.group(2) + m.group(3) + "," + GROWFS + m.group(4)
    else:  # no options field: the defaults, then ours
        body = body.rstrip() + "\tdefaults," + GROWFS
    lines[n - 1] = body + (end or "\n")
    return "".join(lines)


def _growfs_problems(guest: Guest) -> list[str]:
    if not guest.is_file("/etc/fstab"):
        return []  # the layout step reports a missing fstab
    found = _root_line(guest.read("/etc/fstab"))
    if found is None:
        return []  # and an fstab without /
    n, fields = found
    if len(fields) < 4 or GROWFS not in fields[3].split(","):
        return [f"/etc/fstab:{n}: / lacks {GROWFS} (cloud.growfs: the root filesystem would not grow "
                "with the disk when no seed runs cloud-init's resizefs)"]
    return []


# -- cloud-init's units ----------------------------------------------------------------------------------
def shipped_units(guest: Guest) -> dict[str, str]:
    """cloud-init's stage units the image ships → their path (/usr/lib first: /lib is a link to it on
    merged-/usr systems, and that is the path `systemctl enable` links to)."""
    out: dict[str, str] = {}
    for unit in UNITS:
        for d in UNIT_DIRS:
            if guest.is_file(posixpath.join(d, unit)):
                out[unit] = posixpath.join(d, unit)
                break
    return out


def wanted_by(unit_text: str) -> list[str]:
    """The targets of a unit file's [Install] WantedBy= lines (none: a static unit)."""
    targets: list[str] = []
    section = ""
    for line in unit_text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s
        elif section == "[Install]" and s.startswith("WantedBy="):
            targets += s.partition("=")[2].split()
    return targets


def _enabled(guest: Guest, unit: str) -> bool:
    """A symlink to the unit in any /etc/systemd/system/*.wants/: what `systemctl enable` (Debian's
    postinst via deb-systemd-helper, or the RPM's preset) makes, whichever target it names."""
    return any(guest.lexists(posixpath.join(d, unit)) for d in guest.glob(f"{ETC_UNITS}/*.wants"))


def _unit_problems(guest: Guest) -> list[str]:
    problems = []
    for unit, path in shipped_units(guest).items():
        if not wanted_by(guest.read(path)):
            continue  # static: pulled in by another unit
        if not _enabled(guest, unit):
            problems.append(f"{unit} is not enabled (no link in {ETC_UNITS}/*.wants/): cloud-init would not run")
    return problems


def _check_config(guest: Guest, ctx: StepContext) -> list[str]:
    recipe = ctx.recipe
    problems = []
    if not guest.exists(CLOUD_INIT):
        problems.append(f"cloud-init is not installed ({CLOUD_INIT} missing): cloud.enabled wants it "
                        "(cloud.packages)")
    else:
        if not shipped_units(guest):
            problems.append(f"no cloud-init unit found in {' or '.join(UNIT_DIRS)}")
        problems += _unit_problems(guest)
    if not guest.is_file(DROP_IN):
        problems.append(f"{DROP_IN} is missing")
    elif guest.read(DROP_IN) != drop_in_text(recipe):
        problems.append(f"{DROP_IN} differs from what the recipe's [cloud] asks")
    if recipe.cloud.growfs:
        problems += _growfs_problems(guest)
    if guest.lexists(DISABLED):
        problems.append(f"{DISABLED} exists: cloud-init would never run")
    return problems


@register("cloud-config", "cloud.enabled: write our cloud-init drop-in (datasources, renderer, default user), "
          "enable its units, x-systemd.growfs on /", order=20, check=_check_config, when=wanted)
def cloud_config(guest: Guest, ctx: StepContext) -> None:
    """Configure cloud-init from the recipe's [cloud]: the drop-in 95_imagebuild.cfg (after the package's
    90_dpkg.cfg) pins datasource_list (None last), a short OpenStack metadata wait, the network renderer
    and activator, and the default user (locked password, passwordless sudo; no password SSH, no root
    login). Enables cloud-init's units as `systemctl enable` would where a package left them off, removes
    cloud-init.disabled, and with cloud.growfs adds x-systemd.growfs to / in /etc/fstab so the root grows
    to its disk at every boot even with no seed. Applies only with cloud.enabled."""
    recipe = ctx.recipe
    guest.write(DROP_IN, drop_in_text(recipe), mode=0o644)
    guest.remove(DISABLED)
    if guest.exists(CLOUD_INIT):
        for unit, path in shipped_units(guest).items():
            if _enabled(guest, unit):
                continue
            for target in wanted_by(guest.read(path)):
                wants = f"{ETC_UNITS}/{target}.wants"
                guest.mkdir_p(wants)
                guest.symlink(path, posixpath.join(wants, unit))
    if recipe.cloud.growfs and guest.is_file("/etc/fstab"):
        text = guest.read("/etc/fstab")
        new = add_growfs(text)
        if new != text:
            guest.write("/etc/fstab", new)


# -- what a cloud-init run or a seed leaves ----------------------------------------------------------------
CLOUD_DIR = "/var/lib/cloud"      # the package's directory: kept, emptied
SEED_DIR = f"{CLOUD_DIR}/seed"
CFG_D = "/etc/cloud/cloud.cfg.d"
# Files cloud-init writes for the instance it ran on (cloudinit/cmd/clean.py: GEN_NET_CONFIG_FILES,
# GEN_SSH_CONFIG_FILES; distros' ci_sudoers_fn; cc_install_hotplug's rule, installed when an instance's
# config asks for hotplug), and the switch that turns it off for good.
GENERATED = (
    "/etc/netplan/50-cloud-init.yaml",
    "/etc/network/interfaces.d/50-cloud-init.cfg",
    "/etc/NetworkManager/conf.d/99-cloud-init.conf",
    "/etc/NetworkManager/conf.d/30-cloud-init-ip6-addr-gen-mode.conf",
    "/etc/ssh/sshd_config.d/50-cloud-init.conf",
    "/etc/sudoers.d/90-cloud-init-users",
    "/etc/udev/rules.d/90-cloud-init-hook-hotplug.rules",
    DISABLED,
)
GENERATED_GLOBS = (
    "/etc/systemd/network/10-cloud-init-*",                          # .network (and .netdev) per link
    "/etc/NetworkManager/system-connections/cloud-init-*.nmconnection",
    "/var/log/cloud-init*.log*",                                     # cloud-init.log, -output.log, rotated
)
# EL's sysconfig renderer writes ifcfg-/route- files under their usual names: only those that say so go
# (an installer's ifcfg-eth0 stays, generalized by ifcfg-identity).
SYSCONFIG_GLOBS = ("/etc/sysconfig/network-scripts/ifcfg-*", "/etc/sysconfig/network-scripts/route-*",
                   "/etc/sysconfig/network-scripts/route6-*")
SYSCONFIG_MARK = "Created by cloud-init"
# Drop-ins that are a package's or ours: never removed, whatever their name.
KEEP_CFG = frozenset({"05_logging.cfg", "90_dpkg.cfg", "README", posixpath.basename(DROP_IN)})
# Drop-ins that bake one install or one instance in, by name:
# - 99-installer.cfg, 90-installer-network.cfg (Ubuntu's subiquity): datasource None with the
#   installer's user-data (the install user and its password hash) and the install's network;
# - 50-curtin-networking.cfg, 90_dpkg_local_cloud_config.cfg, 90_dpkg_maas.cfg (curtin/MAAS preseeds):
#   the install's network, and MAAS's endpoint with the machine's OAuth credentials;
# - 91_kernel_cmdline_url.cfg: cloud-init saves a `cloud-config-url=` of the build's kernel command line;
# - *nocloud*, *seed*: a NoCloud seed put in as configuration.
# Other drop-ins (a site's, DIB's datasource list) are configuration and stay; a drop-in whose content
# holds a seed (`seedfrom`, or NoCloud's meta-data inline: what ds-identify takes as a seed) goes
# whatever its name. oVirt's "Initial Run" rewrites datasource_list in cloud.cfg itself (a runcmd), no
# drop-in: our 95_imagebuild.cfg overrides that list.
BAKED_CFG = ("99-installer.cfg", "90-installer-network.cfg", "50-curtin-networking.cfg",
             "90_dpkg_local_cloud_config.cfg", "90_dpkg_maas.cfg", "91_kernel_cmdline_url.cfg",
             "*nocloud*", "*seed*")
MOUNT_MARK = "comment=cloudconfig"  # cc_mounts' fstab lines: the instance's ephemeral disk and swap


def holds_seed(text: str) -> bool:
    """A cloud-init config that carries a seed: ds-identify's NoCloud check (`seedfrom`, or NoCloud's
    user-data and meta-data given inline) would find a datasource in the image itself."""
    if re.search(r"^\s*seedfrom\s*:", text, re.M):
        return True
    return "NoCloud" in text and bool(re.search(r"^\s*meta-data\s*:", text, re.M))


def _baked_drop_ins(guest: Guest) -> list[tuple[str, str]]:
    out = []
    for p in guest.glob(f"{CFG_D}/*"):
        name = posixpath.basename(p)
        if name in KEEP_CFG or not guest.is_file(p):
            continue
        if any(fnmatch.fnmatch(name.lower(), pat) for pat in BAKED_CFG):
            out.append((p, f"{p} exists (an installer's or a seed's drop-in)"))
        elif holds_seed(guest.read(p)):
            out.append((p, f"a seed is baked in: {p} holds one (seedfrom or NoCloud meta-data)"))
    return out


def _passwd_entry(guest: Guest, name: str) -> list[str] | None:
    if not name or not guest.is_file("/etc/passwd"):
        return None
    for line in guest.read("/etc/passwd").splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) >= 7:
            return fields
    return None


def _user_paths(guest: Guest, name: str) -> list[str]:
    """The default user's home and mail spool, where present (a home outside /home is left alone)."""
    entry = _passwd_entry(guest, name)
    home = entry[5] if entry else f"/home/{name}"
    paths = [home] if home.startswith("/home/") and home.rstrip("/") != "/home" else []
    paths += [f"/var/mail/{name}", f"/var/spool/mail/{name}"]
    return [p for p in paths if guest.lexists(p)]


def leftovers(guest: Guest, recipe: Recipe) -> list[tuple[str, str]]:
    """What must not ship, as (path, why) pairs: every path is removed by cloud-init-clean."""
    found: list[tuple[str, str]] = []
    for p in guest.glob(f"{CLOUD_DIR}/*"):
        found.append((p, f"a seed is baked in: {p} exists" if p == SEED_DIR else
                      f"{p} exists (state of a cloud-init run)"))
    for p in GENERATED:
        if guest.lexists(p):
            found.append((p, f"{p} exists (cloud-init writes it for one instance)"))
    for pat in GENERATED_GLOBS:
        found += [(p, f"{p} exists (cloud-init writes it for one instance)") for p in guest.glob(pat)]
    for pat in SYSCONFIG_GLOBS:
        found += [(p, f"{p} exists (cloud-init's sysconfig renderer wrote it for one instance)")
                  for p in guest.glob(pat) if guest.is_file(p) and SYSCONFIG_MARK in guest.read(p)]
    found += _baked_drop_ins(guest)
    name = recipe.cloud.default_user
    found += [(p, f"{p} exists (the default user's, made by a cloud-init run)") for p in _user_paths(guest, name)]
    return found


def _cloudconfig_mounts(guest: Guest) -> list[str]:
    if not guest.is_file("/etc/fstab"):
        return []
    return [f"/etc/fstab:{n}: a mount cloud-init added for one instance ({MOUNT_MARK})"
            for n, line in enumerate(guest.read("/etc/fstab").splitlines(), 1) if MOUNT_MARK in line]


def _edit_groups(guest: Guest, path: str, name: str, private: bool) -> None:
    """Drop ``name`` from every member (and gshadow admin) list, and its private group if it has one."""
    text = guest.read(path)
    out = []
    for line in text.splitlines(keepends=True):
        fields = line.rstrip("\n").split(":")
        if len(fields) < 4:
            out.append(line)
            continue
        if fields[0] == name and private:
            continue
        lists = (2, 3) if path.endswith("gshadow") else (3,)
        for i in lists:
            fields[i] = ",".join(m for m in fields[i].split(",") if m and m != name)
        out.append(":".join(fields) + ("\n" if line.endswith("\n") else ""))
    if "".join(out) != text:
        guest.write(path, "".join(out))  # an existing file keeps its owner and mode


def remove_user(guest: Guest, name: str) -> None:
    """What `userdel -r` does, on files (a tree has no userdel; the image's may not match its files)."""
    entry = _passwd_entry(guest, name)
    for p in _user_paths(guest, name):
        if guest.is_dir(p):
            guest.remove_tree(p)
        else:
            guest.remove(p)
    if entry is None:
        return
    gid = entry[3]
    private = False
    if guest.is_file("/etc/group"):
        private = any(ln.split(":")[0] == name and ln.split(":")[2:3] == [gid]
                      for ln in guest.read("/etc/group").splitlines())
    for f in ("/etc/passwd", "/etc/shadow", "/etc/subuid", "/etc/subgid"):
        if guest.is_file(f):
            guest.edit_lines(f, lambda ln: ln.split(":", 1)[0] != name)
    for f in ("/etc/group", "/etc/gshadow"):
        if guest.is_file(f):
            _edit_groups(guest, f, name, private)


def _check_clean(guest: Guest, ctx: StepContext) -> list[str]:
    problems = [why for _, why in leftovers(guest, ctx.recipe)]
    name = ctx.recipe.cloud.default_user
    if _passwd_entry(guest, name) is not None:
        problems.append(f"default user {name} exists in /etc/passwd: cloud-init creates it on each instance, "
                        "with that instance's keys")
    if guest.is_file("/etc/cloud/cloud.cfg") and holds_seed(guest.read("/etc/cloud/cloud.cfg")):
        problems.append("a seed is baked in: /etc/cloud/cloud.cfg holds one (seedfrom or NoCloud meta-data)")
    return problems + _cloudconfig_mounts(guest)


@register("cloud-init-clean", "cloud.enabled: remove cloud-init's instance state, seeds, logs, generated "
          "network/ssh/sudo files and the default user", order=900, check=_check_clean, when=wanted)
def cloud_init_clean(guest: Guest, ctx: StepContext) -> None:
    """What `cloud-init clean --logs --seed --configs all` removes, done on the image's files: /var/lib/cloud's
    contents (instance state, semaphores, seed/), cloud-init's logs, the network, sshd and sudoers files
    it generates for one instance, its fstab mounts, cloud-init.disabled, drop-ins an installer or a seed
    left in /etc/cloud/cloud.cfg.d (the package's and ours stay), and the default user with its home
    wherever it exists (the build never runs cloud-init, a VM install could; cloud-init creates the user
    on each instance with that instance's keys). Its check, in every post-check, also fails on a seed
    baked into cloud.cfg. Applies only with cloud.enabled."""
    for p, _ in leftovers(guest, ctx.recipe):
        if guest.is_dir(p):
            guest.remove_tree(p)
        else:
            guest.remove(p)
    if _passwd_entry(guest, ctx.recipe.cloud.default_user) is not None:
        remove_user(guest, ctx.recipe.cloud.default_user)
    if guest.is_file("/etc/fstab"):
        guest.edit_lines("/etc/fstab", lambda ln: MOUNT_MARK not in ln)

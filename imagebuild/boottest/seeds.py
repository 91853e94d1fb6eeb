"""The cloud-init seeds a boot-test cell attaches as a read-only CD-ROM, made as the clouds make them.

A cloud image is proven against what a cloud really sends, not against a seed written to please it:
- ``nova``: the OpenStack config drive Nova writes (``nova/virt/configdrive.py``, the files from
  ``nova/api/metadata/base.py``'s ``metadata_for_config_drive``): an ISO 9660 labelled ``config-2`` with
  ``openstack/<version>/`` (``meta_data.json``, ``user_data``, ``vendor_data.json``, ``network_data.json``,
  ``vendor_data2.json``, each from the metadata version that introduced it) and ``ec2/<version>/``. The
  instance uuid is the domain's UUID, as Nova's is the guest's DMI system UUID.
- ``ovirt``: the drive oVirt's engine has VDSM write for a VM's Initial Run (ovirt-engine
  ``CloudInitHandler.java``, vdsm ``mkimage.py``): ``config-2`` again, ``openstack/latest/`` only, keys as a
  list, a fresh uuid, ``meta: {dsmode: local, ...}``, and oVirt's own ``#cloud-config`` (password login on,
  its ``runcmd`` that rewrites ``datasource_list`` in ``/etc/cloud/cloud.cfg``); no ``network_data.json``,
  which the engine writes only when the VM has network settings (none here: DHCP).
- ``nocloud``: a ``cidata`` seed (cloud-init's ``DataSourceNoCloud``): ``meta-data``, ``user-data`` and a
  version 2 ``network-config``.

The user-data of the nova and nocloud seeds sets nothing but a ``runcmd`` that appends one line to a
marker per run (the checks count the lines): the hostname must come from the metadata, and everything
else stays as the image's own cloud-init configuration says. Nothing in a seed is random or dated: every
id the clouds would invent is derived from the request's instance id and the ISO's dates are fixed, so
one request gives the same bytes every time. docs/cloud.md and /work/shared/notes/cloud.md hold the
contract these follow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..events import NULL_REPORTER, Reporter
from ..recipe import SeedKind
from ..run import run

# Nova writes every metadata version from 2012-08-10 on; cloud-init reads the newest one it knows
# (2018-08-27 in all releases since 18.5, helpers/openstack.py OS_VERSIONS), else ``latest``. The oldest
# and that one are enough to exercise both paths.
NOVA_VERSIONS = ("2012-08-10", "2018-08-27", "latest")
# nova/api/metadata/base.py: the version each item first appears in ("latest" is newer than all).
_GRIZZLY, _HAVANA, _LIBERTY, _NEWTON_ONE, _NEWTON_TWO, _VICTORIA = (
    "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2016-10-06", "2020-10-14")
# Nova's config drive carries the EC2 metadata too; config_drive_skip_versions leaves only these.
EC2_VERSIONS = ("2009-04-04", "latest")
KEY_NAME = "imagebuild"            # the Nova keypair's name
DHCP_DOMAIN = "novalocal"          # Nova's [api]dhcp_domain default, appended to the metadata hostname
AVAILABILITY_ZONE = "nova"         # Nova's default zone; oVirt writes the same string
GUEST_IPV4 = "10.0.2.15"           # QEMU's user network gives the guest this address (EC2 local-ipv4)
MTU = 1500
# oVirt's first runcmd, verbatim (CloudInitHandler.storeExecutionParameters): "Disable
# metadata-server-based datasources to prevent long boot times". The image's own drop-in in
# cloud.cfg.d still wins over cloud.cfg, which is what the oVirt cell proves.
OVIRT_RUNCMD = ("sed -i '/^datasource_list: /d' /etc/cloud/cloud.cfg; "
                "echo 'datasource_list: [\"NoCloud\", \"ConfigDrive\"]' >> /etc/cloud/cloud.cfg")
OVIRT_OUTPUT = {"all": ">> /var/log/cloud-init-output.log"}
# A seed carries no date a guest reads: a fixed one (file times and SOURCE_DATE_EPOCH for the volume's)
# makes the same request the same ISO.
SEED_EPOCH = 0
# What each cloud passes to mkisofs besides -V and -o. Nova: configdrive._make_iso9660 (its -publisher
# left out); VDSM: -R -J, here -r (the same Rock Ridge names, with owners and modes rationalized, so the
# image does not depend on who built it: the guest reads it as root either way); cloud-localds and the
# NoCloud docs: -J -r.
_MKISOFS_FLAGS: dict[SeedKind, tuple[str, ...]] = {
    SeedKind.NOVA: ("-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-J", "-r"),
    SeedKind.OVIRT: ("-J", "-r"),
    SeedKind.NOCLOUD: ("-J", "-r"),
}
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Namespace of the ids derived from an instance id.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "seeds.imagebuild.invalid")


@dataclass(frozen=True)
class SeedRequest:
    kind: SeedKind
    instance_id: str        # nova: the domain's UUID (Nova's instance uuid = DMI system uuid); ovirt: a fresh
                            # uuid4 string; nocloud: e.g. "iid-<something>"
    hostname: str           # what the guest must call itself (one label; Nova's metadata adds .novalocal)
    public_key: str         # one OpenSSH public key line ("ssh-ed25519 AAAA... comment")
    mac: str                # the guest NIC's MAC (lower-case, colon separated)
    default_user: str       # e.g. "debian" (cloud-init's default user; the key goes to it)
    runcmd_marker: str = "/var/lib/imagebuild-runcmd"  # user-data's runcmd appends one line here per run
    password: str = ""      # ovirt only: the password oVirt's Initial Run sets (a test secret; "" = none)


def seed_label(kind: SeedKind) -> str:
    """The volume label cloud-init's ds-identify looks for."""
    if kind in (SeedKind.NOVA, SeedKind.OVIRT):
        return "config-2"
    if kind is SeedKind.NOCLOUD:
        return "cidata"
    raise ValueError(f"a {kind} cell attaches no seed")


def seed_files(req: SeedRequest) -> dict[str, bytes]:
    """Relative path inside the seed -> content; deterministic (sorted JSON keys, no timestamps)."""
    _validate(req)
    if req.kind is SeedKind.NOVA:
        return _nova_files(req)
    if req.kind is SeedKind.OVIRT:
        return _ovirt_files(req)
    return _nocloud_files(req)


def write_seed(req: SeedRequest, dest: Path, *, reporter: Reporter = NULL_REPORTER) -> Path:
    """Write the seed's files to a temp dir beside ``dest`` and make the ISO 9660 image at ``dest`` with
    xorriso. The temp dir goes pass or fail; ``dest`` appears only whole (written as ``dest.partial``,
    then renamed)."""
    files = seed_files(req)
    label = seed_label(req.kind)
    partial = dest.with_name(dest.name + ".partial")
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}-", dir=dest.parent) as tmp:
        tree = Path(tmp) / "seed"
        for rel, content in files.items():
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        for path in [*tree.rglob("*"), tree]:
            os.utime(path, (SEED_EPOCH, SEED_EPOCH))
        partial.unlink(missing_ok=True)
        try:
            # -report_about SORRY drops xorriso's NOTE lines (its banner stays); -quiet its progress
            run(["xorriso", "-report_about", "SORRY", "-as", "mkisofs", "-quiet", *_MKISOFS_FLAGS[req.kind],
                 "-V", label, "-o", partial, tree], reporter=reporter,
                env={"SOURCE_DATE_EPOCH": str(SEED_EPOCH)},
                purpose=f"make the {req.kind} seed ({label}) the cell attaches as a CD-ROM")
            partial.replace(dest)
        finally:
            partial.unlink(missing_ok=True)
    return dest


# -- the seeds ------------------------------------------------------------------------------------

def _validate(req: SeedRequest) -> None:
    if req.kind is SeedKind.NONE:
        raise ValueError("a 'none' cell attaches no seed")
    problems = []
    if not req.instance_id or req.instance_id != req.instance_id.strip():
        problems.append(f"instance_id {req.instance_id!r} is empty or padded")
    if not _HOSTNAME_RE.match(req.hostname):
        problems.append(f"hostname {req.hostname!r} is not one lower-case DNS label")
    if not _MAC_RE.match(req.mac):
        problems.append(f"mac {req.mac!r} is not lower-case and colon separated")
    if len(req.public_key.split()) < 2 or "\n" in req.public_key.strip():
        problems.append("public_key is not one OpenSSH public key line")
    if not req.default_user or not req.runcmd_marker.startswith("/"):
        problems.append("default_user is empty or runcmd_marker is not an absolute path")
    if req.password and req.kind is not SeedKind.OVIRT:
        problems.append("only oVirt's Initial Run sets a password")
    if problems:
        raise ValueError(f"bad {req.kind} seed request: " + "; ".join(problems))


def _derived(req: SeedRequest, what: str) -> uuid.UUID:
    """An id a cloud would have invented, derived from the instance id (same request, same id)."""
    return uuid.uuid5(_NAMESPACE, f"{what}:{req.instance_id}")


def _json(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()


def _yaml(data: Any) -> str:
    # width: oVirt's sed line stays one line; safe_dump quotes what YAML 1.1 would read as a number (a MAC)
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=4096)


def _marker_runcmd(req: SeedRequest) -> list[str]:
    return ["sh", "-c", f"echo ran >> {shlex.quote(req.runcmd_marker)}"]


def user_data(req: SeedRequest) -> bytes:
    """Our user-data (nova, nocloud): only the marker ``runcmd``; the hostname comes from the metadata."""
    return ("#cloud-config\n" + _yaml({"runcmd": [_marker_runcmd(req)]})).encode()


def _since(version: str, introduced: str) -> bool:
    return version == "latest" or version >= introduced


def _nova_meta_data(req: SeedRequest, version: str) -> dict[str, Any]:
    """``_metadata_as_json``: ``meta`` and ``files`` only when the instance has some (it has none)."""
    md: dict[str, Any] = {
        "uuid": req.instance_id,
        "public_keys": {KEY_NAME: req.public_key},
        "keys": [{"name": KEY_NAME, "type": "ssh", "data": req.public_key}],
        "hostname": f"{req.hostname}.{DHCP_DOMAIN}",
        "name": req.hostname,
        "launch_index": 0,
        "availability_zone": AVAILABILITY_ZONE,
    }
    if _since(version, _GRIZZLY):
        # Nova's is 512 bytes of os.urandom; cloud-init feeds it to the guest's entropy pool
        seed = hashlib.shake_256(f"random_seed:{req.instance_id}".encode()).digest(512)
        md["random_seed"] = base64.b64encode(seed).decode()
    if _since(version, _LIBERTY):
        md["project_id"] = _derived(req, "project").hex
    if _since(version, _NEWTON_ONE):
        md["devices"] = []           # no tagged devices
    if _since(version, _VICTORIA):
        md["dedicated_cpus"] = []    # no pinned CPUs
    return md


def _nova_network_data(req: SeedRequest) -> dict[str, Any]:
    """``netutils.get_network_metadata`` for one Neutron port on a DHCP subnet: an OVS tap named after the
    port, an ``ipv4_dhcp`` network on it, no DNS services."""
    port = _derived(req, "port")
    tap = f"tap{str(port)[:11]}"
    return {
        "links": [{"id": tap, "vif_id": str(port), "type": "ovs", "mtu": MTU, "ethernet_mac_address": req.mac}],
        "networks": [{"id": "network0", "type": "ipv4_dhcp", "link": tap,
                      "network_id": str(_derived(req, "network"))}],
        "services": [],
    }


def _nova_ec2_meta_data(req: SeedRequest) -> dict[str, Any]:
    """``get_ec2_metadata`` for 2009-04-04 (what ``latest`` means there), ``public-keys`` without its
    ``_name``, as the config drive has it."""
    digest = hashlib.sha256(req.instance_id.encode()).hexdigest()
    hostname = f"{req.hostname}.{DHCP_DOMAIN}"
    return {
        "ami-id": f"ami-{digest[8:16]}",
        "ami-launch-index": 0,
        "ami-manifest-path": "FIXME",  # sic: Nova's constant
        "block-device-mapping": {"ami": "vda", "root": "/dev/vda"},
        "hostname": hostname,
        "instance-action": "none",
        "instance-id": f"i-{digest[:8]}",
        "instance-type": "m1.small",
        "local-hostname": hostname,
        "local-ipv4": GUEST_IPV4,
        "placement": {"availability-zone": AVAILABILITY_ZONE},
        "public-hostname": hostname,
        "public-ipv4": "",
        "public-keys": {"0": {"openssh-key": req.public_key}},
        "reservation-id": f"r-{digest[16:24]}",
        "security-groups": ["default"],
    }


def _nova_files(req: SeedRequest) -> dict[str, bytes]:
    ud = user_data(req)
    files: dict[str, bytes] = {}
    for version in EC2_VERSIONS:
        files[f"ec2/{version}/meta-data.json"] = _json(_nova_ec2_meta_data(req))
        files[f"ec2/{version}/user-data"] = ud
    for version in NOVA_VERSIONS:
        base = f"openstack/{version}"
        files[f"{base}/meta_data.json"] = _json(_nova_meta_data(req, version))
        files[f"{base}/user_data"] = ud
        if _since(version, _HAVANA):
            files[f"{base}/vendor_data.json"] = _json({})   # no vendordata configured
        if _since(version, _LIBERTY):
            files[f"{base}/network_data.json"] = _json(_nova_network_data(req))
        if _since(version, _NEWTON_TWO):
            files[f"{base}/vendor_data2.json"] = _json({})  # no dynamic vendordata targets
    return dict(sorted(files.items()))


def _ovirt_files(req: SeedRequest) -> dict[str, bytes]:
    """The keys go in the metadata only (oVirt writes no ssh_authorized_keys), the hostname likewise;
    ``password`` only when one is set, as the engine does."""
    meta_data = {
        "uuid": req.instance_id,
        "hostname": req.hostname,
        "name": req.hostname,
        "public_keys": [req.public_key],
        "meta": {"dsmode": "local", "essential": "false", "role": "server"},
        "launch_index": "0",          # sic: a string in oVirt's
        "availability_zone": AVAILABILITY_ZONE,
    }
    cloud_config: dict[str, Any] = {
        "user": req.default_user,
        "disable_root": 0,            # sic: an int in oVirt's
        "output": OVIRT_OUTPUT,
        # a user's custom script is appended to the engine's YAML as text, so a runcmd of its own would be
        # a duplicate key replacing the engine's; ours is its second item instead
        "runcmd": [OVIRT_RUNCMD, _marker_runcmd(req)],
        "chpasswd": {"expire": False},
        "ssh_pwauth": True,
    }
    if req.password:
        cloud_config["password"] = req.password
    return {
        "openstack/latest/meta_data.json": _json(meta_data),
        "openstack/latest/user_data": ("#cloud-config\n" + _yaml(cloud_config)).encode(),
    }


def _nocloud_files(req: SeedRequest) -> dict[str, bytes]:
    network_config = {"version": 2,
                      "ethernets": {"nic0": {"match": {"macaddress": req.mac}, "dhcp4": True}}}
    return {
        # the key in the metadata, as a cloud hands it over (cloud-localds users put it in the user-data;
        # NoCloud reads `public-keys` from meta-data the same way ConfigDrive reads its public_keys)
        "meta-data": _yaml({"instance-id": req.instance_id, "local-hostname": req.hostname,
                            "public-keys": [req.public_key]}).encode(),
        "network-config": _yaml(network_config).encode(),
        "user-data": user_data(req),
    }

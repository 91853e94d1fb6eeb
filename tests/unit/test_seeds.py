"""The cloud-init seeds (boottest/seeds.py): golden files per kind, the facts each cloud's contract hangs on,
and one real ISO made with xorriso and read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from imagebuild.boottest.seeds import SeedRequest, seed_files, seed_label, write_seed
from imagebuild.errors import CommandFailed
from imagebuild.recipe import SeedKind

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "seeds"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyDataForTheGoldenFilesOnly0123 imagebuild-test"
SEEDED = (SeedKind.NOVA, SeedKind.OVIRT, SeedKind.NOCLOUD)


def request(kind: SeedKind, **kw) -> SeedRequest:
    """The fixed request of the goldens (a MAC of digits only: YAML 1.1 would read it as a number)."""
    iid = "iid-imagebuild-0b7f4a3e" if kind is SeedKind.NOCLOUD else "0b7f4a3e-2c1d-4e5f-8a9b-0c1d2e3f4a5b"
    args = dict(kind=kind, instance_id=iid, hostname="ib-bios-pc-1a2b", public_key=KEY, mac="52:54:00:12:34:56",
                default_user="debian", password="Test-Only-Secret-1" if kind is SeedKind.OVIRT else "")
    args.update(kw)
    return SeedRequest(**args)  # type: ignore[arg-type]


def _json(files: dict[str, bytes], path: str) -> dict:
    return json.loads(files[path])


def _cloud_config(content: bytes) -> dict:
    text = content.decode()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


@pytest.mark.parametrize("kind", SEEDED, ids=str)
def test_seed_files_golden(kind):
    """One golden per file (UPDATE_GOLDEN=1 rewrites them after a deliberate change, stale ones go)."""
    files = seed_files(request(kind))
    root = GOLDEN / str(kind)
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(root, ignore_errors=True)
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(files), f"the {kind} seed's file list changed; rerun with UPDATE_GOLDEN=1 if intended"
    for rel, content in files.items():
        assert content == (root / rel).read_bytes(), f"{kind}/{rel} changed; rerun with UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("kind", SEEDED, ids=str)
def test_seed_files_are_deterministic(kind):
    assert seed_files(request(kind)) == seed_files(request(kind))
    other = seed_files(request(kind, instance_id=request(kind).instance_id + "0"))
    assert other != seed_files(request(kind))


def test_labels():
    assert seed_label(SeedKind.NOVA) == seed_label(SeedKind.OVIRT) == "config-2"
    assert seed_label(SeedKind.NOCLOUD) == "cidata"
    with pytest.raises(ValueError):
        seed_label(SeedKind.NONE)


def test_nova_meta_data():
    req = request(SeedKind.NOVA)
    files = seed_files(req)
    assert {"openstack/2012-08-10/meta_data.json", "openstack/2018-08-27/meta_data.json",
            "openstack/latest/meta_data.json", "ec2/2009-04-04/meta-data.json",
            "ec2/latest/meta-data.json"} <= set(files)
    for version in ("2012-08-10", "2018-08-27", "latest"):
        md = _json(files, f"openstack/{version}/meta_data.json")
        assert md["uuid"] == req.instance_id
        assert md["public_keys"] == {"imagebuild": KEY}  # a mapping, as Nova's
        assert md["keys"] == [{"name": "imagebuild", "type": "ssh", "data": KEY}]
        assert md["hostname"].split(".")[0] == req.hostname and md["name"] == req.hostname
        assert md["launch_index"] == 0 and md["availability_zone"] == "nova"
    latest = _json(files, "openstack/latest/meta_data.json")
    assert latest["devices"] == [] and "project_id" in latest
    # Nova's random_seed is random; ours is derived from the instance id (same request, same seed)
    assert latest["random_seed"] == _json(seed_files(req), "openstack/latest/meta_data.json")["random_seed"]
    # items appear from the metadata version that introduced them, as Nova writes them
    assert "random_seed" not in _json(files, "openstack/2012-08-10/meta_data.json")
    assert sorted(p for p in files if p.startswith("openstack/2012-08-10/")) == [
        "openstack/2012-08-10/meta_data.json", "openstack/2012-08-10/user_data"]
    ec2 = _json(files, "ec2/latest/meta-data.json")
    assert ec2["public-keys"] == {"0": {"openssh-key": KEY}}
    assert ec2["local-hostname"] == ec2["hostname"] == latest["hostname"]
    assert ec2["instance-id"].startswith("i-")


def test_nova_network_data_is_the_nic():
    req = request(SeedKind.NOVA)
    for version in ("2018-08-27", "latest"):
        nd = _json(seed_files(req), f"openstack/{version}/network_data.json")
        (link,) = nd["links"]
        (net,) = nd["networks"]
        assert link["ethernet_mac_address"] == req.mac
        assert net["type"] == "ipv4_dhcp" and net["link"] == link["id"]
        assert nd["services"] == []


def test_ovirt_seed():
    req = request(SeedKind.OVIRT)
    files = seed_files(req)
    assert sorted(files) == ["openstack/latest/meta_data.json", "openstack/latest/user_data"]  # no network_data
    md = _json(files, "openstack/latest/meta_data.json")
    assert md["uuid"] == req.instance_id
    assert md["public_keys"] == [KEY]  # a list, as oVirt's
    assert md["meta"] == {"dsmode": "local", "essential": "false", "role": "server"}
    assert md["launch_index"] == "0" and md["hostname"] == md["name"] == req.hostname
    ud = _cloud_config(files["openstack/latest/user_data"])
    assert ud["ssh_pwauth"] is True and ud["disable_root"] == 0 and ud["chpasswd"] == {"expire": False}
    assert ud["user"] == "debian" and ud["password"] == "Test-Only-Secret-1"
    first, marker = ud["runcmd"]
    assert first.startswith("sed -i '/^datasource_list: /d' /etc/cloud/cloud.cfg; ")
    assert "datasource_list: [\"NoCloud\", \"ConfigDrive\"]" in first
    assert marker == ["sh", "-c", f"echo ran >> {req.runcmd_marker}"]


def test_ovirt_without_password_sets_none():
    ud = _cloud_config(seed_files(request(SeedKind.OVIRT, password=""))["openstack/latest/user_data"])
    assert "password" not in ud and ud["ssh_pwauth"] is True


def test_nocloud_seed():
    req = request(SeedKind.NOCLOUD)
    files = seed_files(req)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": req.instance_id, "local-hostname": req.hostname,
                                                  "public-keys": [req.public_key]}  # the key only the seed carries
    net = yaml.safe_load(files["network-config"])
    assert net["version"] == 2
    (eth,) = net["ethernets"].values()
    assert eth == {"match": {"macaddress": req.mac}, "dhcp4": True}  # the MAC stays a string


@pytest.mark.parametrize("kind", (SeedKind.NOVA, SeedKind.NOCLOUD), ids=str)
def test_our_user_data_only_runs_the_marker(kind):
    """The hostname must come from the metadata, and nothing else of the image's cloud-init config changes."""
    req = request(kind, runcmd_marker="/var/lib/a marker")
    files = seed_files(req)
    for path in (p for p in files if p.endswith(("user_data", "user-data"))):
        ud = _cloud_config(files[path])
        assert ud == {"runcmd": [["sh", "-c", "echo ran >> '/var/lib/a marker'"]]}


def test_none_has_no_seed(tmp_path):
    req = request(SeedKind.NONE)
    with pytest.raises(ValueError):
        seed_files(req)
    with pytest.raises(ValueError):
        write_seed(req, tmp_path / "seed.iso")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change", [dict(mac="52:54:00:AB:CD:EF"), dict(hostname="ib_bad"), dict(instance_id=""),
                                    dict(public_key="ssh-ed25519"), dict(password="x")], ids=str)
def test_bad_requests_are_refused(change):
    with pytest.raises(ValueError):
        seed_files(request(SeedKind.NOVA, **change))


def _iso_volume_id(iso: Path) -> str:
    out = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True, text=True, check=True)
    return next(ln.split(":", 1)[1].strip() for ln in out.stdout.splitlines() if ln.startswith("Volume Id"))


def _iso_files(iso: Path, dest: Path) -> dict[str, bytes]:
    found = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"], capture_output=True,
                           text=True, check=True)
    listed = sorted(ln.strip().strip("'").lstrip("/") for ln in found.stdout.splitlines() if ln.strip())
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(dest)],
                   capture_output=True, check=True)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # Rock Ridge -r makes them read-only; tmp_path must go
    extracted = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert sorted(extracted) == listed
    return extracted


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")
@pytest.mark.parametrize("kind", SEEDED, ids=str)
def test_write_seed_makes_the_iso(kind, tmp_path):
    req = request(kind)
    dest = tmp_path / "seed.iso"
    assert write_seed(req, dest) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]  # no temp dir, no .partial
    assert _iso_volume_id(dest) == seed_label(kind)
    assert _iso_files(dest, tmp_path / "x") == seed_files(req)
    again = tmp_path / "again.iso"
    write_seed(req, again)
    assert again.read_bytes() == dest.read_bytes()  # no dates: the same request, the same ISO


def test_write_seed_leaves_nothing_when_xorriso_fails(tmp_path, monkeypatch):
    import imagebuild.boottest.seeds as seeds

    def failing_run(argv, **kw):
        Path(argv[argv.index("-o") + 1]).write_bytes(b"half an ISO")
        raise CommandFailed("xorriso failed", argv=[str(a) for a in argv], returncode=5, stderr_tail="")

    monkeypatch.setattr(seeds, "run", failing_run)
    with pytest.raises(CommandFailed):
        write_seed(request(SeedKind.NOCLOUD), tmp_path / "seed.iso")
    assert list(tmp_path.iterdir()) == []

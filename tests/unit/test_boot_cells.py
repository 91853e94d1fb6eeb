"""The boot test's shape for a cloud image: which cell carries which seed, the checks each runs (the
registry), a seeded cell's domain (config drive as a read-only CD, port 22 forwarded through QEMU's user
network; golden files), the SSH client's parts, and `invoke vm`'s key handling."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from imagebuild.accel import Accel
from imagebuild.boottest import all_checks, cell_checks, cell_spec, check_names, plan_cells
from imagebuild.boottest.checks import CHECK_NAME, CheckKind
from imagebuild.boottest.matrix import distinct_host_keys
from imagebuild.boottest.results import CellResult
from imagebuild.boottest.ssh import SshEndpoint, free_port, read_banner
from imagebuild.domain import domain_xml
from imagebuild.errors import RecipeError
from imagebuild.localvm import read_public_key, ssh_identity
from imagebuild.recipe import Cell, SeedKind, load_recipe

from .test_domain_xml import check_golden
from .test_firmware import recipe_file

pytestmark = pytest.mark.unit


def test_every_seed_kind_gets_a_cell_without_the_cross_product():
    plans = plan_cells(load_recipe("debian12"))
    assert [(str(p.cell), str(p.seed), p.disk_bus, p.slug) for p in plans] == [
        ("bios/pc", "nova", "virtio", "bios-pc"), ("bios/q35", "ovirt", "scsi", "bios-q35"),
        ("uefi/q35", "nocloud", "virtio", "uefi-q35"), ("secure-boot/q35", "none", "scsi", "secure-boot-q35")]
    # a layout with two cells walks them again, so every kind still boots; file names then carry the seed
    bios = plan_cells(load_recipe("debian12-bios"))
    assert [(str(p.cell), str(p.seed), p.slug) for p in bios] == [
        ("bios/pc", "nova", "bios-pc-nova"), ("bios/q35", "ovirt", "bios-q35-ovirt"),
        ("bios/pc", "nocloud", "bios-pc-nocloud"), ("bios/q35", "none", "bios-q35-none")]
    assert len({p.slug for p in bios}) == len(bios)


def test_cells_chosen_by_hand_boot_once_with_their_own_seed_or_the_one_asked():
    r = load_recipe("debian12")
    cells = (Cell.parse("uefi/q35"), Cell.parse("bios/pc"))
    assert [(str(p.cell), p.seed) for p in plan_cells(r, cells)] == [("uefi/q35", SeedKind.NOCLOUD),
                                                                     ("bios/pc", SeedKind.NOVA)]
    assert [p.seed for p in plan_cells(r, cells, SeedKind.NONE)] == [SeedKind.NONE, SeedKind.NONE]
    assert plan_cells(r, (Cell.parse("bios/q35"),), SeedKind.OVIRT)[0].slug == "bios-q35"


def test_a_recipe_without_cloud_boots_its_cells_once_with_no_seed(tmp_path):
    r = load_recipe(str(recipe_file(tmp_path, "[cloud]\nenabled = false\n")))
    plans = plan_cells(r)
    assert [p.seed for p in plans] == [SeedKind.NONE] * 4 and [p.slug for p in plans][0] == "bios-pc"
    assert not [c for c in cell_checks(r, SeedKind.NONE) if c.kind is CheckKind.CLOUD]
    assert "packages" in {c.name for c in cell_checks(r, SeedKind.NONE)}


def test_the_registry():
    checks = all_checks()
    names = [c.name for c in checks]
    assert len(names) == len(set(names)) and all(CHECK_NAME.match(n) for n in names)
    assert len({c.order for c in checks}) == len(checks)  # the order is explicit, never by accident
    r = load_recipe("debian12")
    nova = [c.name for c in cell_checks(r, SeedKind.NOVA)]
    none = [c.name for c in cell_checks(r, SeedKind.NONE)]
    # the first boot's system checks come first, the freeze last; the cloud contract after multi-user
    assert nova[0] == "firmware" and nova[-1] == "fsfreeze"
    assert nova.index("multi-user") < nova.index("cloud-init-status") < nova.index("ssh-login")
    assert {"ssh-login", "sudo", "password-login", "hostname", "user-data", "datasource"} <= set(nova)
    assert {"cloud-init-status", "root-grown"} <= set(none) and "ssh-login" not in none
    assert [c.name for c in cell_checks(r, SeedKind.NOVA, second_boot=True)] == ["second-boot"]
    assert cell_checks(r, SeedKind.OVIRT, second_boot=True) == []
    assert set(check_names()) >= {"vcpu-hotplug", "balloon", "memory-hotplug", "fsfreeze"}


def test_skipped_checks_are_not_run():
    r = load_recipe("debian12")
    from dataclasses import replace
    r2 = replace(r, boot_test=replace(r.boot_test, skip_checks=("fsfreeze", "sudo")))
    names = {c.name for c in cell_checks(r2, SeedKind.NOVA)}
    assert "fsfreeze" not in names and "sudo" not in names and "ssh-login" in names


@pytest.mark.parametrize("cell, bus, seed", [("bios/pc", "virtio", "nova"), ("uefi/q35", "scsi", "nocloud")])
def test_seeded_cell_domain_xml_golden(cell, bus, seed):
    """A seeded cell: the config drive a read-only CD (IDE on i440fx, SATA on q35, never clashing with a
    virtio-scsi root disk's sda), the domain UUID Nova's metadata names, and the virtio NIC on QEMU's
    user network with the guest's port 22 forwarded to a loopback port."""
    c = Cell.parse(cell)
    spec = cell_spec(load_recipe("debian12"), c, name=f"imagebuild-debian12-x-boot-{c.slug}", accel=Accel.TCG,
                     overlay=Path("/w/overlay.qcow2"), nvram=Path(f"/w/{c.slug}-VARS.fd"),
                     console_log=Path(f"/o/boot-console-{c.slug}.log"), mac="52:54:00:12:34:56", disk_bus=bus,
                     seed_iso=Path("/w/seed.iso"), ssh_port=40022, uuid_="0a1b2c3d-0000-4000-8000-000000000001")
    xml = domain_xml(spec)
    check_golden(f"boottest-domain-{c.slug}-{seed}.xml", xml)
    assert "<interface" not in xml and "hostfwd=tcp:127.0.0.1:40022-:22" in xml
    assert xml.count('device="cdrom"') == 1 and "<readonly />" in xml


def test_banner_is_read_and_a_silent_accept_is_not_one():
    """QEMU's user network accepts on the forwarded port before the guest listens: only a banner counts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)
    port = srv.getsockname()[1]

    def serve() -> None:
        a, _ = srv.accept()
        a.close()                                   # accepted, then closed: nothing in the guest yet
        b, _ = srv.accept()
        b.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
        b.close()
    t = threading.Thread(target=serve)
    t.start()
    try:
        assert read_banner(port, timeout=3) == ""
        assert read_banner(port, timeout=3) == "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"
    finally:
        t.join(5)
        srv.close()
    assert read_banner(free_port(), timeout=1) == ""  # nothing listens at all


def test_ssh_options_pin_the_key_and_known_hosts(tmp_path):
    opts = SshEndpoint(2222, tmp_path / "k", "debian", tmp_path).options()
    assert opts[:2] == ["-p", "2222"] and "IdentitiesOnly=yes" in opts and "BatchMode=yes" in opts
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in opts and opts[-2:] == ["-F", "/dev/null"]


def test_distinct_host_keys_across_clones():
    def cell(name: str, key: str) -> CellResult:
        return CellResult(name, "bios", "pc", "virtio", True, "tcg", "m", 1.0, 2.0, [], "c", facts={"host_key": key})
    assert distinct_host_keys([cell("bios/pc", "SHA256:a"), cell("bios/q35", "SHA256:b")]).ok
    same = distinct_host_keys([cell("bios/pc", "SHA256:a"), cell("bios/q35", "SHA256:a")])
    assert not same.ok and "SHA256:a" in same.detail
    assert distinct_host_keys([cell("bios/pc", "SHA256:a")]) is None


def test_invoke_vm_key_is_checked_before_any_vm(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    with pytest.raises(RecipeError, match=r"--key: no public key given and none in"):
        read_public_key(None, home)
    with pytest.raises(RecipeError, match=r"--key /nonexistent.pub: cannot read"):
        read_public_key("/nonexistent.pub", home)
    priv = home / ".ssh" / "id_ed25519"
    priv.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(RecipeError, match="that is a private key"):
        read_public_key(str(priv), home)
    bad = tmp_path / "bad.pub"
    bad.write_text("hello world\n")
    with pytest.raises(RecipeError, match=r"bad.pub: not one OpenSSH public key"):
        read_public_key(str(bad), home)
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3Nza me@host\n")
    path, line = read_public_key(None, home)
    assert path == home / ".ssh" / "id_ed25519.pub" and line == "ssh-ed25519 AAAAC3Nza me@host"
    assert ssh_identity(path) == f" -i {priv}"

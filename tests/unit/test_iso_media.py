"""Installing from an ISO: the ISO is pinned (and checked against the distribution's clearsigned
checksum list), downloaded into the media cache, the installer's kernel and initrd are read out of it
with xorriso, and it is attached to the installer as its CD-ROM. Real ISOs made by xorriso, served
over HTTP; real gpg/gpgv with a throwaway key."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imagebuild.answerfile import render_answer_file
from imagebuild.errors import RecipeError
from imagebuild.install.media import ChecksumMismatch, MediaError, SignatureError, fetch_boot_files, pin_boot_files
from imagebuild.install.vm import VMInstaller
from imagebuild.install.vm_plan import describe_vm_install, kernel_arguments
from imagebuild.recipe import load_recipe

from .test_media import TreeServer
from .test_signed_media import gpg, make_key

pytestmark = pytest.mark.unit

ISO_NAME = "CentOS-7-x86_64-Minimal-2009.iso"
KERNEL, INITRD = b"iso kernel " * 3000, b"iso initrd " * 20000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_iso(path: Path, files: dict[str, bytes], label: str = "CentOS 7 x86_64") -> bytes:
    root = path.parent / (path.name + ".d")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", label, "-R", "-J", "-o", str(path), str(root)],
                   check=True, capture_output=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    base = tmp_path_factory.mktemp("isokeys")
    make_key(base / "centos", "Test CentOS-7 Key <security@invalid>")
    keyring = base / "centos.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--batch", "--homedir", str(base / "centos"), "--export"],
                                       check=True, capture_output=True).stdout)
    yield base / "centos", keyring
    subprocess.run(["gpgconf", "--homedir", str(base / "centos"), "--kill", "gpg-agent"], check=False)


@pytest.fixture
def mirror(tmp_path, signer):
    """vault-like: isos/x86_64/<iso> and a clearsigned sha256sum.txt.asc beside it."""
    home, _ = signer
    isos = tmp_path / "mirror" / "isos" / "x86_64"
    isos.mkdir(parents=True)
    data = make_iso(isos / ISO_NAME, {"images/pxeboot/vmlinuz": KERNEL, "images/pxeboot/initrd.img": INITRD,
                                      ".treeinfo": b"[general]\nfamily = CentOS\n", "Packages/README": b"rpms"})
    (isos / "sha256sum.txt").write_text(f"{sha(b'dvd')}  CentOS-7-x86_64-DVD-2009.iso\n{sha(data)}  {ISO_NAME}\n")
    gpg(home, "--yes", "--clearsign", "--output", str(isos / "sha256sum.txt.asc"), str(isos / "sha256sum.txt"))
    server = TreeServer(tmp_path / "mirror")
    server.iso = data
    yield server
    server.close()


def iso_recipe(server: TreeServer, keyring: Path | None = None, **vm_changes):
    recipe = load_recipe("centos7")
    values = {"tree_url": "", "iso_url": f"{server.url}isos/x86_64/{ISO_NAME}", "iso_sha256": sha(server.iso),
              "media_trust": "pinned", "kernel": "", "initrd": "", **vm_changes}
    if keyring is not None:
        values.update(iso_checksums_url=f"{server.url}isos/x86_64/sha256sum.txt.asc", keyring=str(keyring))
    vm = dataclasses.replace(recipe.install.vm, **values)
    return dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))


def test_boot_files_come_out_of_the_pinned_iso(mirror, tmp_path):
    boot = fetch_boot_files(iso_recipe(mirror), cache_dir=tmp_path / "cache", scratch=tmp_path / "work")
    assert boot.kernel.read_bytes() == KERNEL and boot.initrd.read_bytes() == INITRD
    assert boot.iso is not None and boot.iso.read_bytes() == mirror.iso and boot.iso_sha256 == sha(mirror.iso)
    assert boot.iso.is_relative_to(tmp_path / "cache") and boot.kernel.is_relative_to(tmp_path / "work")
    assert boot.kernel_url.endswith(f"{ISO_NAME}!/images/pxeboot/vmlinuz")
    # a second build takes the ISO from the cache (re-verified), not from the mirror
    before = len(mirror.gets(f"/isos/x86_64/{ISO_NAME}"))
    fetch_boot_files(iso_recipe(mirror), cache_dir=tmp_path / "cache", scratch=tmp_path / "work2")
    assert len(mirror.gets(f"/isos/x86_64/{ISO_NAME}")) == before


def test_the_signed_checksum_list_vouches_for_the_iso(mirror, signer, tmp_path):
    _, keyring = signer
    boot = fetch_boot_files(iso_recipe(mirror, keyring), cache_dir=tmp_path / "cache", scratch=tmp_path / "w")
    assert "sha256sum.txt.asc" in boot.signed_by and "Test CentOS-7 Key" in boot.signed_by
    # media_trust = "signed": no pin needed, the signed list's hash is the one the download is held to
    signed = iso_recipe(mirror, keyring, iso_sha256="", media_trust="signed")
    assert fetch_boot_files(signed, cache_dir=tmp_path / "c2", scratch=tmp_path / "w2").iso_sha256 == sha(mirror.iso)
    assert pin_boot_files(iso_recipe(mirror, keyring, iso_sha256=""), cache_dir=tmp_path / "c3") == {
        "iso_sha256": sha(mirror.iso)}


def test_a_pin_the_signed_list_disagrees_with_stops_before_the_download(mirror, signer, tmp_path):
    _, keyring = signer
    with pytest.raises(ChecksumMismatch, match="the ISO or the pin is wrong"):
        fetch_boot_files(iso_recipe(mirror, keyring, iso_sha256=sha(b"another")), cache_dir=tmp_path / "c",
                         scratch=tmp_path / "w")
    assert mirror.gets(f"/isos/x86_64/{ISO_NAME}") == []


def test_a_checksum_list_signed_by_another_key_is_refused(mirror, tmp_path):
    other = tmp_path / "other"
    make_key(other, "Not CentOS <x@invalid>")
    keyring = tmp_path / "other.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--batch", "--homedir", str(other), "--export"], check=True,
                                       capture_output=True).stdout)
    try:
        with pytest.raises(SignatureError, match="sha256sum.txt.asc failed verification"):
            fetch_boot_files(iso_recipe(mirror, keyring), cache_dir=tmp_path / "c", scratch=tmp_path / "w")
    finally:
        subprocess.run(["gpgconf", "--homedir", str(other), "--kill", "gpg-agent"], check=False)


def test_unpinned_iso_is_refused_and_a_corrupt_one_rejected(mirror, tmp_path):
    with pytest.raises(MediaError, match="iso_sha256 is not pinned"):
        fetch_boot_files(iso_recipe(mirror, iso_sha256=""), cache_dir=tmp_path / "c", scratch=tmp_path / "w")
    with pytest.raises(ChecksumMismatch):
        fetch_boot_files(iso_recipe(mirror, iso_sha256=sha(b"x")), cache_dir=tmp_path / "c", scratch=tmp_path / "w")


def test_a_kernel_the_iso_lacks_is_named(mirror, tmp_path):
    with pytest.raises(MediaError, match="has no isolinux/vmlinuz"):
        fetch_boot_files(iso_recipe(mirror, kernel="isolinux/vmlinuz"), cache_dir=tmp_path / "c",
                         scratch=tmp_path / "w")


def test_the_installer_boots_from_the_iso_and_installs_from_its_cdrom(mirror):
    recipe = iso_recipe(mirror)
    ks = render_answer_file(recipe).text
    lines = ks.splitlines()
    assert "cdrom" in lines and not [ln for ln in lines if ln.startswith("url ")]
    assert "inst.repo=cdrom" in kernel_arguments(recipe)
    plan = describe_vm_install(recipe)
    assert plan["iso_url"].endswith(ISO_NAME) and plan["pinned"] and "tree_url" not in plan
    xml = ET.fromstring(VMInstaller().describe(recipe)["domain_xml"].split("<!--")[0])
    [cd] = [d for d in xml.iter("disk") if d.get("device") == "cdrom"]
    assert cd.find("target").attrib == {"dev": "hdc", "bus": "ide"} and cd.find("readonly") is not None
    assert cd.find("source").get("file").endswith(ISO_NAME)
    assert "xorriso" in VMInstaller().tools(recipe)


@pytest.mark.parametrize(("vm", "message"), [
    ('iso_url = "http://x/a.iso"', "set exactly one install source"),
    ('tree_url = ""', "set exactly one install source"),
    ('tree_url = ""\niso_url = "ftp://x/a.iso"', r"must be an http\(s\) or file URL"),
    ('iso_checksums_url = "http://x/sha256sum.txt.asc"', "only for an install ISO"),
    ('tree_url = ""\niso_url = "http://x/a.iso"\niso_sha256 = "ABC"', "must be a sha256"),
])
def test_install_source_rules(tmp_path, vm, message):
    path = tmp_path / "centos7-iso.toml"
    path.write_text(f'extends = "centos7"\n[install.vm]\n{vm}\n')
    with pytest.raises(RecipeError, match=message) as e:
        load_recipe(str(path))
    assert "centos7-iso.toml" in str(e.value) and "install.vm." in str(e.value)


def test_keyring_problems_are_named_before_anything_is_downloaded(mirror, signer, tmp_path, monkeypatch):
    from imagebuild.events import Reporter
    monkeypatch.setenv("IMAGEBUILD_ROOT_PASSWORD", "not-used-here")
    missing = iso_recipe(mirror, tmp_path / "no-such-keyring.gpg")
    with pytest.raises(RecipeError, match="install.vm.keyring.*no-such-keyring.gpg.*does not exist"):
        VMInstaller().validate(missing, Reporter(stream=open("/dev/null", "w")), for_build=True)  # noqa: SIM115
    home, _ = signer
    armored = tmp_path / "centos.asc"
    armored.write_text(gpg(home, "--armor", "--export"))
    with pytest.raises(MediaError, match="ASCII-armored.*gpg --dearmor"):
        fetch_boot_files(iso_recipe(mirror, armored), cache_dir=tmp_path / "c", scratch=tmp_path / "w")
    assert mirror.requests == []

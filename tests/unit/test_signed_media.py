"""Debian trees: the installer's SHA256SUMS is chained to the archive's signed InRelease (real gpg and
gpgv, a throwaway archive key made by the test), so `media_trust = "signed"` needs no pins and a
mirror serving an index the archive did not sign is refused before any large download."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path

import pytest

from imagebuild.install.media import (
    ChecksumMismatch,
    MediaError,
    SignatureError,
    dists_split,
    fetch_boot_files,
    pin_boot_files,
    release_sha256,
)
from imagebuild.recipe import load_recipe

from .test_media import TreeServer

pytestmark = pytest.mark.unit

IMAGES = "main/installer-amd64/current/images/"
LINUX, INITRD = b"signed debian kernel" * 500, b"signed debian initrd" * 3000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gpg(home: Path, *args: str) -> str:
    return subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(home), *args], check=True,
                          capture_output=True, text=True).stdout


def make_key(home: Path, uid: str) -> None:
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An archive key (its public half is the keyring builds trust) and a stranger's key."""
    base = tmp_path_factory.mktemp("keys")
    make_key(base / "archive", "Test Archive Signing Key <archive@invalid>")
    make_key(base / "stranger", "Someone Else <stranger@invalid>")
    keyring = base / "archive-keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--batch", "--homedir", str(base / "archive"), "--export"],
                                       check=True, capture_output=True).stdout)
    yield base, keyring
    for home in ("archive", "stranger"):  # gpg started an agent per home: leave no process behind
        subprocess.run(["gpgconf", "--homedir", str(base / home), "--kill", "gpg-agent"], check=False)


def write_archive(root: Path, home: Path, *, sums_listed: bytes | None = None,
                  gpg_args: list[str] | None = None) -> None:
    """debian/dists/bookworm/{InRelease, main/installer-amd64/current/images/...} signed with ``home``."""
    dists = root / "debian" / "dists" / "bookworm"
    nb = dists / IMAGES / "netboot" / "debian-installer" / "amd64"
    nb.mkdir(parents=True)
    (nb / "linux").write_bytes(LINUX)
    (nb / "initrd.gz").write_bytes(INITRD)
    sums = (f"{sha(LINUX)}  ./netboot/debian-installer/amd64/linux\n"
            f"{sha(INITRD)}  ./netboot/debian-installer/amd64/initrd.gz\n").encode()
    (dists / IMAGES / "SHA256SUMS").write_bytes(sums)
    listed = sums if sums_listed is None else sums_listed
    release = ("Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:50 UTC\n"
               "MD5Sum:\n 8bda4ce4f0530ae601d1d7a7c47eb927    78509 " + IMAGES + "SHA256SUMS\n"
               "SHA256:\n"
               f" {sha(b'other')}      5 main/binary-amd64/Packages\n"
               f" {sha(listed)} {len(listed):8} {IMAGES}SHA256SUMS\n")
    (dists / "Release").write_text(release)
    gpg(home, *(gpg_args or []), "--yes", "--clearsign", "--output", str(dists / "InRelease"),
        str(dists / "Release"))


def recipe_for(server: TreeServer, keyring: Path, **vm_changes):
    recipe = load_recipe("debian12-preseed")
    values = {"tree_url": server.url + "debian/dists/bookworm/" + IMAGES, "keyring": str(keyring),
              "kernel_sha256": "", "initrd_sha256": "", "media_trust": "signed", **vm_changes}
    vm = dataclasses.replace(recipe.install.vm, **values)
    return dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))


@pytest.fixture
def archive(tmp_path, keys):
    base, _ = keys
    write_archive(tmp_path / "mirror", base / "archive")
    server = TreeServer(tmp_path / "mirror")
    yield server
    server.close()


def test_signed_trust_takes_the_hashes_from_the_signed_index(archive, keys, tmp_path):
    boot = fetch_boot_files(recipe_for(archive, keys[1]), cache_dir=tmp_path / "cache")
    assert boot.kernel.read_bytes() == LINUX and boot.initrd.read_bytes() == INITRD
    assert (boot.kernel_sha256, boot.initrd_sha256) == (sha(LINUX), sha(INITRD))
    assert boot.signed_by.startswith(archive.url + "debian/dists/bookworm/InRelease")
    assert "Test Archive Signing Key" in boot.signed_by


def test_pins_are_checked_against_the_signed_index_too(archive, keys, tmp_path):
    recipe = recipe_for(archive, keys[1], media_trust="pinned", kernel_sha256=sha(LINUX), initrd_sha256=sha(INITRD))
    boot = fetch_boot_files(recipe, cache_dir=tmp_path / "cache")
    assert boot.checksum_source == "SHA256SUMS" and "InRelease" in boot.signed_by
    pins = pin_boot_files(recipe, cache_dir=tmp_path / "cache2")
    assert pins == {"kernel_sha256": sha(LINUX), "initrd_sha256": sha(INITRD)}


def test_an_index_the_archive_did_not_sign_is_refused_before_the_download(tmp_path, keys):
    base, keyring = keys
    write_archive(tmp_path / "mirror", base / "archive", sums_listed=b"what the archive really signed\n")
    server = TreeServer(tmp_path / "mirror")
    try:
        with pytest.raises(ChecksumMismatch, match="the mirror serves an index the archive did not sign"):
            fetch_boot_files(recipe_for(server, keyring), cache_dir=tmp_path / "cache")
        assert not [p for p, _ in server.requests if p.endswith(("/linux", "/initrd.gz"))]
    finally:
        server.close()


def test_a_release_signed_by_another_key_is_refused(tmp_path, keys):
    base, keyring = keys
    write_archive(tmp_path / "mirror", base / "stranger")
    server = TreeServer(tmp_path / "mirror")
    try:
        with pytest.raises(SignatureError, match="no valid signature by a key in"):
            fetch_boot_files(recipe_for(server, keyring, media_trust="pinned", kernel_sha256=sha(LINUX),
                                        initrd_sha256=sha(INITRD)), cache_dir=tmp_path / "cache")
    finally:
        server.close()


def test_a_release_signed_only_by_an_expired_key_is_refused(tmp_path):
    home = tmp_path / "old"
    home.mkdir(mode=0o700)
    then = ["--faked-system-time", "20200101T000000"]  # a key that expired in 2020, and its signature
    gpg(home, *then, "--passphrase", "", "--quick-gen-key", "Old Archive Key <old@invalid>", "ed25519", "sign", "30d")
    keyring = tmp_path / "old.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--batch", "--homedir", str(home), "--export"], check=True,
                                       capture_output=True).stdout)
    write_archive(tmp_path / "mirror", home, gpg_args=then)
    server = TreeServer(tmp_path / "mirror")
    try:
        with pytest.raises(SignatureError, match="no valid signature by a key in"):
            fetch_boot_files(recipe_for(server, keyring), cache_dir=tmp_path / "cache")
    finally:
        server.close()
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def test_a_tampered_release_is_refused(archive, keys, tmp_path):
    inrelease = archive.root / "debian/dists/bookworm/InRelease"
    inrelease.write_text(inrelease.read_text().replace("Suite: stable", "Suite: stab1e"))
    with pytest.raises(SignatureError, match="a bad signature"):
        fetch_boot_files(recipe_for(archive, keys[1]), cache_dir=tmp_path / "cache")


def test_signed_trust_needs_a_signed_tree(archive, keys, tmp_path):
    (archive.root / "debian/dists/bookworm/InRelease").unlink()
    with pytest.raises(MediaError, match="InRelease: HTTP 404"):
        fetch_boot_files(recipe_for(archive, keys[1]), cache_dir=tmp_path / "cache")
    # pinned media still build from such a tree, on the pins alone
    pinned = recipe_for(archive, keys[1], media_trust="pinned", kernel_sha256=sha(LINUX), initrd_sha256=sha(INITRD))
    assert fetch_boot_files(pinned, cache_dir=tmp_path / "cache").signed_by == ""


def test_release_parsing_and_dists_split():
    assert dists_split("http://m/debian/dists/bookworm/main/installer-amd64/current/images/") == (
        "http://m/debian/dists/bookworm/", "main/installer-amd64/current/images/")
    assert dists_split("http://vault.centos.org/7.9.2009/os/x86_64/") is None
    release = f"SHA256:\n {'a' * 64} 12 main/x/SHA256SUMS\n {'b' * 63} 1 short\nSHA512:\n {'c' * 64} 1 y\n"
    assert release_sha256(release) == {"main/x/SHA256SUMS": "a" * 64}

"""Recipe preflight against a real (tiny) signed archive on 127.0.0.1: gpg-signed InRelease (a throwaway
key made by the test), xz- and gz-compressed Packages indexes held to InRelease's sha256, a suite that
does not exist, a mirror that does not answer, a misspelt package with its close match, and the build's
validate stopping before mmdebstrap."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import socket
from pathlib import Path

import pytest

from imagebuild.errors import RecipeError, RecipeErrors
from imagebuild.events import Reporter
from imagebuild.install.bootstrap import BootstrapInstaller
from imagebuild.install.media import ChecksumMismatch, MediaError
from imagebuild.preflight import parse_packages, preflight
from imagebuild.recipe import BASE_PACKAGES, load_recipe

from .test_media import TreeServer
from .test_signed_media import gpg, keys  # noqa: F401 - keys is a fixture

pytestmark = pytest.mark.unit

INCLUDE = ("linux-image-amd64", "grub-pc", "openssh-server")
CLOUD = load_recipe("debian12").cloud.packages  # cloud-init and the root-growing tools ([cloud])
MAIN = INCLUDE + BASE_PACKAGES + CLOUD + ("qemu-guest-agent", "mawk", "grub-cloud-amd64")  # debian12 is hybrid


def stanza(name: str, provides: str = "") -> str:
    return (f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\n" + (f"Provides: {provides}\n" if provides else "")
            + f"Filename: pool/main/{name[0]}/{name}/{name}_1.0_amd64.deb\n\n")


def write_suite(root: Path, home: Path, suite: str, packages: str, *, gz: bool = False,
                listed: bytes | None = None) -> None:
    dists = root / "dists" / suite
    comp = dists / "main" / "binary-amd64"
    comp.mkdir(parents=True)
    data = gzip.compress(packages.encode()) if gz else lzma.compress(packages.encode())
    name = "Packages.gz" if gz else "Packages.xz"
    (comp / name).write_bytes(data)
    signed = data if listed is None else listed
    release = (f"Origin: Test\nCodename: {suite}\nArchitectures: amd64\nComponents: main\nSHA256:\n"
               f" {hashlib.sha256(signed).hexdigest()} {len(signed):8} main/binary-amd64/{name}\n")
    (dists / "Release").write_text(release)
    gpg(home, "--yes", "--clearsign", "--output", str(dists / "InRelease"), str(dists / "Release"))


@pytest.fixture
def archive(tmp_path, keys):  # noqa: F811 - the fixture imported above
    base, keyring = keys
    home = base / "archive"
    write_suite(tmp_path / "www" / "debian", home, "bookworm",
                "".join(stanza(p) for p in MAIN) + stanza("exim4-daemon-light", "mail-transport-agent"))
    write_suite(tmp_path / "www" / "debian", home, "bookworm-updates", stanza("tzdata"), gz=True)
    write_suite(tmp_path / "www" / "debian-security", home, "bookworm-security", stanza("openssl"))
    server = TreeServer(tmp_path / "www")
    yield server, keyring
    server.close()


def recipe_file(tmp_path: Path, server: TreeServer, *, suite: str = "bookworm", extra: str = '"qemu-guest-agent"',
                mirror: str | None = None) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(f'extends = "debian12"\n[install.bootstrap]\nsuite = "{suite}"\n'
                    f'mirror = "{mirror or server.url + "debian"}"\nsecurity_mirror = "{server.url}debian-security"\n'
                    f'include = {list(INCLUDE)!r}\n[packages]\nextra = [{extra}]\n'.replace("'", '"'))
    return path


def test_a_recipe_whose_packages_exist_passes_and_the_second_run_uses_the_cache(archive, tmp_path):
    server, keyring = archive
    recipe = load_recipe(str(recipe_file(tmp_path, server, extra='"qemu-guest-agent", "mail-transport-agent"')))
    report = preflight(recipe, keyring=str(keyring), cache_dir=tmp_path / "cache")
    # + the cloud packages + the firmware's boot loader package
    assert report.checked == len(INCLUDE) + len(BASE_PACKAGES) + 2 + len(CLOUD) + 1
    assert [s.suite for s in report.suites] == ["bookworm", "bookworm-updates", "bookworm-security"]
    assert "Test Archive Signing Key" in report.suites[0].signed_by and report.suites[0].downloaded > 0
    server.requests.clear()
    again = preflight(recipe, keyring=str(keyring), cache_dir=tmp_path / "cache")
    assert all(s.downloaded == 0 for s in again.suites)
    assert sorted(p for p, _ in server.requests) == sorted(
        ["/debian/dists/bookworm/InRelease", "/debian/dists/bookworm-updates/InRelease",
         "/debian-security/dists/bookworm-security/InRelease"])  # only the signed indexes, again


def test_every_missing_package_is_named_with_its_key_and_a_close_match(archive, tmp_path):
    server, keyring = archive
    path = recipe_file(tmp_path, server, extra='"qemu-guest-agnet", "vim", "no-such-thing"')
    with pytest.raises(RecipeErrors) as e:
        preflight(load_recipe(str(path)), keyring=str(keyring), cache_dir=tmp_path / "cache")
    assert [(x.file, x.key) for x in e.value.errors] == [(str(path), "packages.extra[0]"),
                                                         (str(path), "packages.extra[2]")]
    assert "package 'qemu-guest-agnet' does not exist in bookworm" in str(e.value)
    assert "did you mean 'qemu-guest-agent'?" in str(e.value)
    assert e.value.exit_code == 2


def test_a_suite_that_does_not_exist_names_the_suite_key(archive, tmp_path):
    server, keyring = archive
    path = recipe_file(tmp_path, server, suite="bookwrom")
    with pytest.raises(RecipeError) as e:
        preflight(load_recipe(str(path)), keyring=str(keyring), cache_dir=tmp_path / "cache")
    assert not isinstance(e.value, RecipeErrors)  # -updates and -security are not repeated
    assert (e.value.file, e.value.key) == (str(path), "install.bootstrap.suite")
    assert "suite 'bookwrom' does not exist" in str(e.value) and "HTTP 404" in str(e.value)


def test_a_mirror_that_does_not_answer_names_the_mirror_key(archive, tmp_path):
    server, keyring = archive
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    path = recipe_file(tmp_path, server, mirror=f"http://127.0.0.1:{port}/debian")
    with pytest.raises(RecipeError) as e:
        preflight(load_recipe(str(path)), keyring=str(keyring), cache_dir=tmp_path / "cache", timeout=5)
    assert e.value.key == "install.bootstrap.mirror" and "the mirror does not answer" in str(e.value)


def test_an_index_the_archive_did_not_sign_is_refused(tmp_path, keys):  # noqa: F811
    base, keyring = keys
    write_suite(tmp_path / "www" / "debian", base / "archive", "bookworm", stanza("vim"), listed=b"other")
    server = TreeServer(tmp_path / "www")
    try:
        path = tmp_path / "x.toml"
        path.write_text(f'extends = "debian12"\n[install.bootstrap]\nmirror = "{server.url}debian"\n'
                        'security_mirror = ""\n')
        with pytest.raises(ChecksumMismatch):
            preflight(load_recipe(str(path)), keyring=str(keyring), cache_dir=tmp_path / "cache")
    finally:
        server.close()


def test_the_build_runs_the_preflight_before_mmdebstrap(archive, tmp_path, monkeypatch):
    server, _ = archive
    monkeypatch.setenv("IMAGEBUILD_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe(str(recipe_file(tmp_path, server)))
    BootstrapInstaller().validate(recipe, Reporter(), for_build=False)  # invoke validate: offline
    assert server.requests == []
    # A build checks against the Debian keyring, which did not sign this test archive: it stops here.
    with pytest.raises(MediaError):
        BootstrapInstaller().validate(recipe, Reporter(stream=open("/dev/null", "w")), for_build=True)  # noqa: SIM115
    assert server.requests and server.requests[0][0] == "/debian/dists/bookworm/InRelease"


def test_parse_packages_reads_names_and_provides():
    names = parse_packages(b"Package: a\nProvides: x (= 1), y\n\nPackage: b\nDepends: c\n")
    assert names == {"a", "x", "y", "b"}

"""Install media against a real HTTP server on 127.0.0.1 serving trees the tests make: the CentOS 7.9
layout (images/pxeboot/vmlinuz, initrd.img, .treeinfo with [images-x86_64] and [checksums]) and
Debian's netboot layout (netboot/debian-installer/amd64/{linux,initrd.gz}, SHA256SUMS)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import random
import threading
from pathlib import Path

import pytest

from imagebuild.errors import InstallFailed, RecipeError
from imagebuild.install import media
from imagebuild.install.media import (
    ChecksumMismatch,
    MediaError,
    fetch,
    fetch_boot_files,
    media_cache_dir,
    parse_sha256sums,
    parse_treeinfo,
    pin_boot_files,
    site_mirrors,
)
from imagebuild.install.vm_plan import describe_vm_install
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.unit

# The .treeinfo of the CentOS 7.9.2009 tree has this shape (and, there, no [checksums] section).
CENTOS79_TREEINFO = """[general]
name = CentOS-7
family = CentOS
timestamp = 1603729576.26
variant =
version = 7
packagedir =
arch = x86_64

[stage2]
mainimage = LiveOS/squashfs.img

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
boot.iso = images/boot.iso

[images-xen]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TreeServer:
    """Serves ``root`` over HTTP/1.1 with byte ranges; ``faults`` make it misbehave per path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []   # (path, Range header)
        self.faults: dict[str, dict] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                fault = server.faults.get(path, {})
                if "status" in fault:
                    self.send_error(fault["status"])
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                start = 0
                if rng and not fault.get("ignore_range"):
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = fault.get("cut_after")
                if cut is not None and fault.get("times", 1) > 0:
                    fault["times"] = fault.get("times", 1) - 1
                    self.wfile.write(body[:cut])   # then drop the connection mid-body
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tree(tmp_path):
    """An EL7-style tree: the kernel is small, the initrd spans several download chunks."""
    root = tmp_path / "tree"
    rnd = random.Random(7)
    kernel = rnd.randbytes(300_000)
    initrd = rnd.randbytes(2_500_000)
    (root / "images" / "pxeboot").mkdir(parents=True)
    (root / "images" / "pxeboot" / "vmlinuz").write_bytes(kernel)
    (root / "images" / "pxeboot" / "initrd.img").write_bytes(initrd)
    (root / ".treeinfo").write_text(CENTOS79_TREEINFO + "\n[checksums]\n"
                                    f"images/pxeboot/vmlinuz = sha256:{sha(kernel)}\n"
                                    f"images/pxeboot/initrd.img = sha256:{sha(initrd)}\n")
    server = TreeServer(root)
    server.kernel, server.initrd = kernel, initrd
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def el_recipe(server: TreeServer, **changes):
    recipe = load_recipe("centos7")
    values = {"tree_url": server.url, "kernel_sha256": sha(server.kernel),
              "initrd_sha256": sha(server.initrd), "media_trust": "pinned", **changes}
    vm = dataclasses.replace(recipe.install.vm, **values)
    return dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))


KERNEL = "/images/pxeboot/vmlinuz"
INITRD = "/images/pxeboot/initrd.img"


# -- fetch -----------------------------------------------------------------------------------------

def test_fetch_downloads_verifies_and_caches(tree, cache):
    path = fetch(tree.url + KERNEL[1:], sha(tree.kernel), cache_dir=cache)
    assert path == cache / "sha256" / sha(tree.kernel) / "vmlinuz"
    assert path.read_bytes() == tree.kernel
    assert not list(path.parent.glob("*.part"))
    again = fetch(tree.url + KERNEL[1:], sha(tree.kernel), cache_dir=cache)
    assert again == path and tree.gets(KERNEL) == [None]  # the second use did not download


def test_cached_copy_is_reverified_on_every_use(tree, cache):
    path = fetch(tree.url + KERNEL[1:], sha(tree.kernel), cache_dir=cache)
    path.write_bytes(b"bit rot" + tree.kernel[7:])
    again = fetch(tree.url + KERNEL[1:], sha(tree.kernel), cache_dir=cache)
    assert again.read_bytes() == tree.kernel and len(tree.gets(KERNEL)) == 2


def test_checksum_mismatch_rejects_and_deletes_the_partial_download(tree, cache):
    wrong = sha(b"something else")
    with pytest.raises(ChecksumMismatch) as info:
        fetch(tree.url + KERNEL[1:], wrong, cache_dir=cache)
    assert sha(tree.kernel) in str(info.value) and wrong in str(info.value)
    assert isinstance(info.value, InstallFailed)
    slot = cache / "sha256" / wrong
    assert not (slot / "vmlinuz").exists() and not (slot / "vmlinuz.part").exists()


def test_interrupted_download_resumes_with_a_range_request(tree, cache):
    tree.faults[INITRD] = {"cut_after": 1_000_000, "times": 1}
    path = fetch(tree.url + INITRD[1:], sha(tree.initrd), cache_dir=cache, retry_delay=0)
    assert path.read_bytes() == tree.initrd
    assert tree.gets(INITRD) == [None, "bytes=1000000-"]


def test_partial_download_from_an_earlier_run_is_resumed_not_used(tree, cache):
    slot = cache / "sha256" / sha(tree.initrd)
    slot.mkdir(parents=True)
    (slot / "initrd.img.part").write_bytes(tree.initrd[:700_000])
    path = fetch(tree.url + INITRD[1:], sha(tree.initrd), cache_dir=cache)
    assert path.read_bytes() == tree.initrd
    assert tree.gets(INITRD) == ["bytes=700000-"]


def test_stale_partial_is_discarded_and_the_file_fetched_whole(tree, cache):
    slot = cache / "sha256" / sha(tree.initrd)
    slot.mkdir(parents=True)
    (slot / "initrd.img.part").write_bytes(b"\0" * 500_000)   # from some older file
    path = fetch(tree.url + INITRD[1:], sha(tree.initrd), cache_dir=cache)
    assert path.read_bytes() == tree.initrd
    assert tree.gets(INITRD) == ["bytes=500000-", None]


def test_server_ignoring_range_is_handled(tree, cache):
    slot = cache / "sha256" / sha(tree.kernel)
    slot.mkdir(parents=True)
    (slot / "vmlinuz.part").write_bytes(tree.kernel[:1000])
    tree.faults[KERNEL] = {"ignore_range": True}
    assert fetch(tree.url + KERNEL[1:], sha(tree.kernel), cache_dir=cache).read_bytes() == tree.kernel


def test_complete_partial_is_verified_and_used_after_416(tree, cache):
    slot = cache / "sha256" / sha(tree.kernel)
    slot.mkdir(parents=True)
    (slot / "vmlinuz.part").write_bytes(tree.kernel)   # killed after the last byte, before the rename
    assert fetch(tree.url + KERNEL[1:], sha(tree.kernel), cache_dir=cache).read_bytes() == tree.kernel
    assert tree.gets(KERNEL) == [f"bytes={len(tree.kernel)}-"]


def test_http_error_names_the_url(tree, cache):
    with pytest.raises(MediaError, match=r"/images/pxeboot/missing: HTTP 404"):
        fetch(tree.url + "images/pxeboot/missing", sha(b"x"), cache_dir=cache)


def test_giving_up_keeps_the_partial_for_next_time_but_never_uses_it(tree, cache):
    tree.faults[INITRD] = {"cut_after": 400_000, "times": 10}
    with pytest.raises(MediaError, match="gave up after 2 attempts"):
        fetch(tree.url + INITRD[1:], sha(tree.initrd), cache_dir=cache, attempts=2, retry_delay=0)
    slot = cache / "sha256" / sha(tree.initrd)
    assert not (slot / "initrd.img").exists()
    assert (slot / "initrd.img.part").stat().st_size == 800_000
    tree.faults.clear()
    assert fetch(tree.url + INITRD[1:], sha(tree.initrd), cache_dir=cache).read_bytes() == tree.initrd
    assert tree.gets(INITRD)[-1] == "bytes=800000-"


def test_unpinned_media_is_refused(tree, cache):
    with pytest.raises(MediaError, match="no sha256 pinned"):
        fetch(tree.url + KERNEL[1:], "", cache_dir=cache)
    assert tree.requests == []


def test_two_builds_fetching_one_file_download_it_once(tree, cache):
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        fetch(tree.url + INITRD[1:], sha(tree.initrd), cache_dir=cache))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2 and results[0] == results[1]
    assert tree.gets(INITRD) == [None]


# -- configuration ---------------------------------------------------------------------------------

def test_cache_dir_default_and_override():
    assert media_cache_dir({"IMAGEBUILD_CACHE": "/srv/ib-cache"}) == Path("/srv/ib-cache/media")
    assert media_cache_dir({}) == Path(os.path.expanduser("~/.cache/imagebuild/media"))


def test_site_mirrors():
    env = {"IMAGEBUILD_MIRRORS": "http://vault.centos.org/=http://m.example/vault/ "
                                 "http://deb.debian.org/debian/=file:///srv/debian/"}
    assert site_mirrors(env) == {"http://vault.centos.org/": "http://m.example/vault/",
                                 "http://deb.debian.org/debian/": "file:///srv/debian/"}
    assert site_mirrors({}) == {}
    with pytest.raises(RecipeError, match="IMAGEBUILD_MIRRORS"):
        site_mirrors({"IMAGEBUILD_MIRRORS": "vault.centos.org"})


# -- .treeinfo and SHA256SUMS ------------------------------------------------------------------------

def test_parse_centos79_treeinfo_without_checksums():
    info = parse_treeinfo(CENTOS79_TREEINFO)
    assert (info.family, info.version, info.arch) == ("CentOS", "7", "x86_64")
    assert (info.kernel, info.initrd, info.stage2) == ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img",
                                                       "LiveOS/squashfs.img")
    assert info.checksums == {} and info.sha256("images/pxeboot/vmlinuz") is None


def test_parse_productmd_treeinfo_with_checksums():
    text = ("[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n"
            "[release]\nname = AlmaLinux\nversion = 9\n\n"
            "[tree]\narch = x86_64\n\n[images-x86_64]\nkernel = images/pxeboot/vmlinuz\n"
            "initrd = images/pxeboot/initrd.img\n\n[checksums]\n"
            f"images/pxeboot/vmlinuz = sha256:{'A' * 64}\nimages/pxeboot/initrd.img = md5:{'b' * 32}\n"
            "Images/Odd.img = sha256:" + "c" * 64 + "\n")
    info = parse_treeinfo(text)
    assert (info.family, info.version) == ("AlmaLinux", "9")
    assert info.sha256("images/pxeboot/vmlinuz") == "a" * 64
    assert info.sha256("images/pxeboot/initrd.img") is None          # not a sha256
    assert info.sha256("Images/Odd.img") == "c" * 64                 # keys keep their case


@pytest.mark.parametrize("text,message", [
    ("not an ini file", "not a valid .treeinfo"),
    ("[general]\narch = aarch64\n[images-aarch64]\nkernel = k\n", "describes an aarch64 tree"),
    ("[general]\narch = x86_64\n", r"no \[images-x86_64\] section"),
])
def test_bad_treeinfo_is_a_media_error(text, message):
    with pytest.raises(MediaError, match=message):
        parse_treeinfo(text)


def test_parse_sha256sums():
    text = f"{'a' * 64}  ./netboot/debian-installer/amd64/linux\n{'B' * 64} *./mini.iso\ngarbage\n"
    assert parse_sha256sums(text) == {"netboot/debian-installer/amd64/linux": "a" * 64, "mini.iso": "b" * 64}


# -- the installer's kernel and initrd ----------------------------------------------------------------

def test_fetch_boot_files_from_an_el_tree(tree, cache):
    recipe = el_recipe(tree)
    boot = fetch_boot_files(recipe, cache_dir=cache)
    assert boot.kernel.read_bytes() == tree.kernel and boot.initrd.read_bytes() == tree.initrd
    assert boot.checksum_source == ".treeinfo"
    plan = describe_vm_install(recipe)
    assert (boot.kernel_url, boot.initrd_url) == (plan["kernel"]["url"], plan["initrd"]["url"])
    assert [p for p, _ in tree.requests] == ["/.treeinfo", KERNEL, INITRD]


def test_paths_come_from_treeinfo_when_the_recipe_names_none(tree, cache):
    boot = fetch_boot_files(el_recipe(tree, kernel="", initrd=""), cache_dir=cache)
    assert boot.kernel.name == "vmlinuz" and boot.initrd.name == "initrd.img"


def test_treeinfo_disagreeing_with_the_pin_stops_before_the_download(tree, cache):
    recipe = el_recipe(tree, initrd_sha256=sha(b"an older initrd"))
    with pytest.raises(ChecksumMismatch, match=r"\.treeinfo lists sha256 .* but the recipe pins"):
        fetch_boot_files(recipe, cache_dir=cache)
    assert tree.gets(KERNEL) == [] and tree.gets(INITRD) == []


def test_tree_without_checksums_relies_on_the_pins(tree, cache):
    (tree.root / ".treeinfo").write_text(CENTOS79_TREEINFO)   # exactly the 7.9.2009 shape
    boot = fetch_boot_files(el_recipe(tree), cache_dir=cache)
    assert boot.checksum_source == "" and boot.initrd.read_bytes() == tree.initrd
    (tree.root / "images" / "pxeboot" / "vmlinuz").write_bytes(b"swapped by a mirror")
    (boot.kernel).unlink()
    with pytest.raises(ChecksumMismatch):
        fetch_boot_files(el_recipe(tree), cache_dir=cache)


def test_unpinned_recipe_is_refused_with_the_listed_checksum(tree, cache):
    recipe = el_recipe(tree, kernel_sha256="")
    with pytest.raises(MediaError) as info:
        fetch_boot_files(recipe, cache_dir=cache)
    assert "install.vm.kernel_sha256 is not pinned" in str(info.value)
    assert f"lists {sha(tree.kernel)}" in str(info.value)
    assert tree.gets(KERNEL) == []


def test_first_use_trust_records_the_hash_and_holds_later_builds_to_it(tree, cache):
    recipe = el_recipe(tree, kernel_sha256="", initrd_sha256="", media_trust="first-use")
    boot = fetch_boot_files(recipe, cache_dir=cache)
    assert (boot.kernel_sha256, boot.initrd_sha256) == (sha(tree.kernel), sha(tree.initrd))
    pins = json.loads((cache / "first-use-pins.json").read_text())
    assert pins == {tree.url + KERNEL[1:]: sha(tree.kernel), tree.url + INITRD[1:]: sha(tree.initrd)}
    # the same URL now serves something else: the recorded hash refuses it
    (tree.root / "images" / "pxeboot" / "vmlinuz").write_bytes(b"swapped kernel")
    for p in (cache / "sha256").glob("*/vmlinuz"):
        p.unlink()
    with pytest.raises(ChecksumMismatch):
        fetch_boot_files(el_recipe(tree, kernel_sha256="", initrd_sha256="", media_trust="first-use"),
                         cache_dir=cache)


def test_pin_boot_files_then_build_without_downloading_again(tree, cache):
    recipe = el_recipe(tree, kernel_sha256="", initrd_sha256="")
    pins = pin_boot_files(recipe, cache_dir=cache)
    assert pins == {"kernel_sha256": sha(tree.kernel), "initrd_sha256": sha(tree.initrd)}
    assert not list((cache / "unverified").iterdir())
    tree.requests.clear()
    boot = fetch_boot_files(el_recipe(tree, **pins), cache_dir=cache)
    assert boot.initrd.read_bytes() == tree.initrd
    assert [p for p, _ in tree.requests] == ["/.treeinfo"]


def test_pin_refuses_a_file_the_tree_lists_differently(tree, cache):
    (tree.root / "images" / "pxeboot" / "initrd.img").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        pin_boot_files(el_recipe(tree, kernel_sha256="", initrd_sha256=""), cache_dir=cache)
    assert not list((cache / "unverified").iterdir())
    assert not (cache / "sha256" / sha(b"tampered")).exists()


def test_missing_treeinfo_with_explicit_paths_uses_pins_alone(tree, cache):
    (tree.root / ".treeinfo").unlink()
    assert fetch_boot_files(el_recipe(tree), cache_dir=cache).checksum_source == ""
    with pytest.raises(MediaError, match="HTTP 404"):
        fetch_boot_files(el_recipe(tree, kernel=""), cache_dir=cache)


def test_site_mirror_serves_the_tree(tree, cache):
    recipe = el_recipe(tree)
    far = "http://vault.centos.invalid/7.9.2009/os/x86_64/"
    vm = dataclasses.replace(recipe.install.vm, tree_url=far)
    recipe = dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))
    boot = fetch_boot_files(recipe, cache_dir=cache, mirrors={"http://vault.centos.invalid/7.9.2009/os/x86_64/":
                                                              tree.url})
    assert boot.kernel_url == tree.url + "images/pxeboot/vmlinuz"


def test_debian_netboot_layout(tmp_path, cache):
    root = tmp_path / "images"
    nb = root / "netboot" / "debian-installer" / "amd64"
    nb.mkdir(parents=True)
    linux, initrd = b"debian kernel" * 1000, b"debian initrd" * 5000
    (nb / "linux").write_bytes(linux)
    (nb / "initrd.gz").write_bytes(initrd)
    (root / "SHA256SUMS").write_text(f"{sha(linux)}  ./netboot/debian-installer/amd64/linux\n"
                                     f"{sha(initrd)}  ./netboot/debian-installer/amd64/initrd.gz\n"
                                     f"{sha(b'x')}  ./netboot/mini.iso\n")
    server = TreeServer(root)
    try:
        recipe = load_recipe("debian12-preseed")
        vm = dataclasses.replace(recipe.install.vm, tree_url=server.url, kernel_sha256=sha(linux),
                                 initrd_sha256=sha(initrd))
        recipe = dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))
        boot = fetch_boot_files(recipe, cache_dir=cache)
        assert boot.kernel.read_bytes() == linux and boot.initrd.read_bytes() == initrd
        assert boot.checksum_source == "SHA256SUMS"
        stale = dataclasses.replace(vm, initrd_sha256=sha(b"last point release"))
        with pytest.raises(ChecksumMismatch, match="SHA256SUMS lists"):
            install = dataclasses.replace(recipe.install, vm=stale)
            fetch_boot_files(dataclasses.replace(recipe, install=install), cache_dir=cache)
    finally:
        server.close()


def test_media_module_has_no_network_in_describe(monkeypatch):
    """describe_vm_install is pure: it works with the network switched off."""
    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(media.download.urllib.request, "urlopen", no_network)
    assert describe_vm_install(load_recipe("centos7"))["kernel"]["path"] == "images/pxeboot/vmlinuz"

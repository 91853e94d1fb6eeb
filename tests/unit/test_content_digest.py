"""The content digest: the sha256 of the disk the guest sees. A raw file and its qcow2 conversions (made
by qemu-img: compressed or not, compat 0.10 or 1.1, small and large clusters) have one content digest and
different file digests; a one-byte change in the guest changes it; what the reader does not know is
refused, never guessed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuild.content_digest import UnreadableImage, content_sha256
from imagebuild.digest import sha256_file
from imagebuild.errors import ImageBuildError

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                 reason="qemu-img and qemu-io are needed")]

MIB = 1 << 20


def qemu(*argv: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """64 MiB: random data (incompressible), text (compressible), a lone byte, zeros and a hole, with data
    in the last sector too."""
    path = tmp_path_factory.mktemp("content") / "disk.raw"
    rnd = __import__("random").Random(23)
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        for offset, data in ((0, rnd.randbytes(3 * MIB)), (5 * MIB + 17, b"imagebuild " * 50_000),
                             (33 * MIB + 4095, b"\x01"), (40 * MIB, bytes(2 * MIB)),
                             (64 * MIB - 700, rnd.randbytes(700))):
            f.seek(offset)
            f.write(data)
    return path


def convert(raw: Path, name: str, *options: str) -> Path:
    out = raw.with_name(name)
    if not out.exists():
        qemu("qemu-img", "convert", "-f", "raw", "-O", "qcow2", *options, str(raw), str(out))
    return out


@pytest.mark.parametrize("name, options", [
    ("plain.qcow2", ()),
    ("zlib.qcow2", ("-c",)),
    ("compat010.qcow2", ("-c", "-o", "compat=0.10")),
    ("small-clusters.qcow2", ("-c", "-o", "cluster_size=4096")),
    ("large-clusters.qcow2", ("-o", "cluster_size=2M")),
])
def test_a_raw_file_and_its_qcow2_have_one_content_digest(raw, name, options):
    qcow2 = convert(raw, name, *options)
    want = hashlib.sha256(raw.read_bytes()).hexdigest()
    assert content_sha256(raw, "raw") == want
    assert content_sha256(qcow2, "qcow2") == want
    assert sha256_file(qcow2) != sha256_file(raw)   # the files differ, the disks do not


def test_two_encodings_of_one_disk_differ_as_files_not_as_content(raw):
    plain, compressed = convert(raw, "plain.qcow2"), convert(raw, "zlib.qcow2", "-c")
    assert sha256_file(plain) != sha256_file(compressed)
    assert content_sha256(plain, "qcow2") == content_sha256(compressed, "qcow2")


def test_one_byte_changes_the_content_digest(raw, tmp_path):
    qcow2 = tmp_path / "disk.qcow2"
    shutil.copy(convert(raw, "zlib.qcow2", "-c"), qcow2)
    before = content_sha256(qcow2, "qcow2")
    qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 0x55 {33 * MIB + 4095} 1", str(qcow2))
    after = content_sha256(qcow2, "qcow2")
    assert after != before
    changed = bytearray(raw.read_bytes())
    changed[33 * MIB + 4095] = 0x55
    assert after == hashlib.sha256(changed).hexdigest()


def test_zero_clusters_and_discards_read_as_zeros(raw, tmp_path):
    """qemu-io's ``write -z`` sets the zero flag of allocated clusters (compat 1.1), ``discard`` drops
    them; ``qemu-img convert -O raw`` is the reference for what the guest sees."""
    qcow2 = tmp_path / "disk.qcow2"
    shutil.copy(convert(raw, "plain.qcow2"), qcow2)
    qemu("qemu-io", "-f", "qcow2", "-c", f"write -z {MIB} {MIB}", "-c", f"discard {5 * MIB} {MIB}",
         "-c", f"write -P 7 {50 * MIB + 3} 70000", str(qcow2))
    reference = tmp_path / "reference.raw"
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(reference))
    assert content_sha256(qcow2, "qcow2") == hashlib.sha256(reference.read_bytes()).hexdigest()
    assert content_sha256(reference, "raw") == content_sha256(qcow2, "qcow2")


def test_a_sparse_and_a_full_raw_file_of_one_disk_agree(raw, tmp_path):
    full = tmp_path / "full.raw"
    full.write_bytes(raw.read_bytes())         # no holes
    assert content_sha256(full, "raw") == content_sha256(raw, "raw")


def test_a_virtual_size_not_a_multiple_of_the_cluster(tmp_path):
    path = tmp_path / "odd.raw"
    path.write_bytes(os.urandom(196 * 512 - 3) + b"end")     # 98 KiB: a cluster and a half (qemu: 512-byte units)
    qcow2 = convert(path, "odd.qcow2", "-c")
    assert content_sha256(qcow2, "qcow2") == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_overlay_is_refused_not_guessed(raw, tmp_path):
    overlay = tmp_path / "overlay.qcow2"
    qemu("qemu-img", "create", "-f", "qcow2", "-b", str(convert(raw, "plain.qcow2")), "-F", "qcow2", str(overlay))
    with pytest.raises(UnreadableImage, match=f"^{overlay}: a qcow2 with a backing file"):
        content_sha256(overlay, "qcow2")


def test_the_format_is_named_and_checked(raw, tmp_path):
    with pytest.raises(UnreadableImage, match="not a qcow2 file"):
        content_sha256(raw, "qcow2")
    with pytest.raises(UnreadableImage, match="format 'vmdk'"):
        content_sha256(raw, "vmdk")
    with pytest.raises(UnreadableImage, match=f"^{tmp_path / 'gone.qcow2'}: no such image") as err:
        content_sha256(tmp_path / "gone.qcow2", "qcow2")
    assert isinstance(err.value, ImageBuildError)


def test_a_truncated_or_corrupt_qcow2_is_an_error(raw, tmp_path):
    qcow2 = tmp_path / "cut.qcow2"
    data = convert(raw, "zlib.qcow2", "-c").read_bytes()
    qcow2.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="truncated|corrupt"):
        content_sha256(qcow2, "qcow2")
    qcow2.write_bytes(data[:72] + (1 << 1).to_bytes(8, "big") + data[80:])   # the "corrupt" mark
    with pytest.raises(UnreadableImage, match="the corrupt mark"):
        content_sha256(qcow2, "qcow2")

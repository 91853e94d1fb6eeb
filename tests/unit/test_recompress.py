"""Compressing only what changed (``recompress``): a disk changed in a few clusters is written as a
compressed qcow2 that reuses an earlier artifact's clusters, and qemu-img finds it consistent and holding
exactly the new disk's data; what cannot be reused is refused before anything is written."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

from imagebuild import recompress as rc

pytestmark = pytest.mark.unit
C = rc.CLUSTER


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def make_disk(path, clusters: int, seed: int = 1) -> None:
    """Text-like (compressible) clusters, random (incompressible) ones, and holes of zeros."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(clusters * C)
        for c in range(0, clusters, 3):
            f.seek(c * C)
            if c % 9 == 0:
                f.write(rnd.randbytes(C))
            else:
                f.write((f"cluster {c} " * 9000).encode()[:C - 100])


def compressed(raw, dest) -> None:
    res = qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compat=1.1,compression_type=zlib",
                   str(raw), str(dest))
    assert res.returncode == 0, res.stderr


def changed_after_compression(tmp_path, cluster: int, data: bytes):
    """A 300-cluster disk and its artifact (qemu-img), then the disk written at one cluster."""
    raw, old = tmp_path / "disk.raw", tmp_path / "old.qcow2"
    make_disk(raw, 300)
    compressed(raw, old)
    with open(raw, "r+b") as f:
        f.seek(cluster * C)
        f.write(data)
    return raw, old


def test_a_changed_disk_reuses_the_unchanged_clusters_and_holds_exactly_the_new_data(tmp_path):
    raw, old = tmp_path / "disk.raw", tmp_path / "old.qcow2"
    make_disk(raw, 400)
    compressed(raw, old)
    with open(raw, "r+b") as f:  # change three clusters, zero one, fill a hole, grow nothing
        for c, data in ((3, b"changed" * 100), (6, os.urandom(C)), (12, bytes(C)), (1, b"new in a hole")):
            f.seek(c * C)
            f.write(data)
    new = tmp_path / "new.qcow2"
    counts = rc.recompress(rc.raw_source(raw), rc.read_earlier(old), new)
    assert (counts.compressed, counts.stored, counts.zero) == (2, 1, 1) and counts.reused > 80, counts
    assert counts.kept == 45  # the random clusters, stored uncompressed by qemu-img as here
    assert qemu_img("check", "-f", "qcow2", str(new)).returncode == 0
    cmp = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(new))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    info = qemu_img("info", "--output=json", str(new)).stdout
    assert '"compression-type": "zlib"' in info and '"compat": "1.1"' in info
    # about the size qemu-img gives the same disk
    again = tmp_path / "again.qcow2"
    compressed(raw, again)
    assert abs(new.stat().st_size - again.stat().st_size) < 4 * C


def test_the_index_made_ahead_decides_as_the_decompression_does_and_a_digest_is_the_proof(tmp_path):
    """``EarlierIndex`` (made while the appliance boots) keeps each compressed cluster's sha256 and
    stream length: the artifact written with it is byte for byte the one written by decompressing; a
    cluster whose digest does not match the new data is compressed anew, never taken."""
    raw, old = changed_after_compression(tmp_path, 4, b"changed" * 100)
    earlier, digests = rc.EarlierIndex(old).result()
    assert len(digests) == sum(1 for e in earlier.l2.values() if e & rc.COMPRESSED) > 50
    by_inflate, by_digest = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    slow = rc.recompress(rc.raw_source(raw), earlier, by_inflate)
    fast = rc.recompress(rc.raw_source(raw), earlier, by_digest, digests=digests)
    assert slow == fast and fast.compressed == 1 and by_inflate.read_bytes() == by_digest.read_bytes()
    wrong = dict(digests)
    wrong[6] = (bytes(32), wrong[6][1])  # the earlier cluster 6 said to hold other data
    counts = rc.recompress(rc.raw_source(raw), earlier, tmp_path / "c.qcow2", digests=wrong)
    assert counts.compressed == 2 and counts.reused == fast.reused - 1
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(tmp_path / "c.qcow2")).returncode == 0
    with pytest.raises(rc.CannotReuse, match="not a qcow2 file"):
        (tmp_path / "junk").write_bytes(b"junk" * 1000)
        rc.EarlierIndex(tmp_path / "junk").result()


def test_an_unchanged_disk_is_all_reused_and_a_wholly_new_one_all_compressed(tmp_path):
    raw, old = tmp_path / "disk.raw", tmp_path / "old.qcow2"
    make_disk(raw, 200)
    compressed(raw, old)
    counts = rc.recompress(rc.raw_source(raw), rc.read_earlier(old), tmp_path / "same.qcow2")
    assert counts.compressed == 0 and counts.stored == 0 and counts.reused > 40 and counts.kept == 23
    other = tmp_path / "other.raw"
    make_disk(other, 200, seed=2)
    with open(other, "r+b") as f:
        for c in range(1, 200, 3):
            f.seek(c * C)
            f.write(f"other {c}".encode() * 1000)
    counts = rc.recompress(rc.raw_source(other), rc.read_earlier(old), tmp_path / "other.qcow2")
    assert counts.reused < 60 < counts.compressed
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(other), str(tmp_path / "other.qcow2")).returncode == 0


def test_what_cannot_be_reused_is_refused(tmp_path):
    raw, old = tmp_path / "disk.raw", tmp_path / "old.qcow2"
    make_disk(raw, 20)
    res = qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "cluster_size=131072", str(raw), str(old))
    assert res.returncode == 0
    with pytest.raises(rc.CannotReuse, match="131072-byte clusters"):
        rc.read_earlier(old)
    compressed(raw, old)
    with open(raw, "ab") as f:
        f.truncate(40 * C)
    with pytest.raises(rc.CannotReuse, match="bytes of guest disk"):
        rc.recompress(rc.raw_source(raw), rc.read_earlier(old), tmp_path / "x.qcow2")
    (tmp_path / "not.qcow2").write_bytes(b"\0" * 512)
    with pytest.raises(rc.CannotReuse, match="not a qcow2 file"):
        rc.read_earlier(tmp_path / "not.qcow2")


def test_compress_takes_an_earlier_artifact_s_clusters_and_falls_back_to_qemu_img(tmp_path):
    """``sparsify.compress`` with ``reuse``: a qcow2 disk (as a rebuild's overlay) read through a raw
    copy; an earlier artifact it cannot use (here not a qcow2) leaves the whole disk to qemu-img."""
    import io

    from imagebuild.events import Reporter
    from imagebuild.sparsify import compress

    raw, old = changed_after_compression(tmp_path, 7, b"customized" * 50)
    disk = tmp_path / "disk.qcow2"
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)).returncode == 0
    out = io.StringIO()
    info = compress(disk, "qcow2", tmp_path / "a.qcow2", compat="1.1", reporter=Reporter(out),
                    reuse=rc.EarlierIndex(old))
    assert "compressed anew" in out.getvalue() and info.compression == "zlib"
    assert qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(disk), str(tmp_path / "a.qcow2")).returncode == 0
    assert not list(tmp_path.glob(".*.raw")) and not list(tmp_path.glob(".*.partial"))
    (tmp_path / "bad.qcow2").write_bytes(b"junk" * 1000)
    out = io.StringIO()
    compress(disk, "qcow2", tmp_path / "b.qcow2", compat="1.1", reporter=Reporter(out, verbose=True),
             reuse=rc.EarlierIndex(tmp_path / "bad.qcow2"))
    assert "compressed anew" not in out.getvalue()
    assert qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(disk), str(tmp_path / "b.qcow2")).returncode == 0


def test_an_overlay_is_read_through_its_chain_where_qemu_img_map_places_it(tmp_path):
    """A rebuild's disk is an overlay over the cached install: read in place, layer by layer, with no
    raw copy; the result holds exactly the overlay's view."""
    import io

    from imagebuild.events import Reporter
    from imagebuild.sparsify import compress

    raw, old = tmp_path / "disk.raw", tmp_path / "old.qcow2"
    make_disk(raw, 300)
    compressed(raw, old)
    base = tmp_path / "base.qcow2"
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(base)).returncode == 0
    top = tmp_path / "top.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)).returncode == 0
    io_res = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 7 {5 * C} {2 * C}",
                             "-c", f"write -z {9 * C} {C}", str(top)], capture_output=True, text=True)
    assert io_res.returncode == 0, io_res.stderr
    out = io.StringIO()
    compress(top, "qcow2", tmp_path / "a.qcow2", compat="1.1", reporter=Reporter(out, verbose=True),
             reuse=rc.EarlierIndex(old))
    assert "compressed anew" in out.getvalue() and "raw copy" not in out.getvalue(), out.getvalue()
    assert qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(top), str(tmp_path / "a.qcow2")).returncode == 0
    # a compressed layer has no plain place to read: refused, and compress reads a raw copy instead
    ctop = tmp_path / "ctop.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(old), str(ctop)).returncode == 0
    with pytest.raises(rc.CannotReuse, match="no plain, cluster-aligned place"):
        extents = json.loads(qemu_img("map", "--output=json", str(ctop)).stdout)
        rc.mapped_source([ctop, old], extents, 300 * C)
    out = io.StringIO()
    compress(ctop, "qcow2", tmp_path / "b.qcow2", compat="1.1", reporter=Reporter(out, verbose=True),
             reuse=rc.EarlierIndex(old))
    assert "raw copy" in out.getvalue() and "compressed anew" in out.getvalue(), out.getvalue()
    assert qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(ctop), str(tmp_path / "b.qcow2")).returncode == 0
    assert not list(tmp_path.glob(".*.raw"))

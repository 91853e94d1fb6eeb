"""Sparsify and compress: the working disk becomes the distributable qcow2.

Free space was already discarded inside the libguestfs session (``fstrim`` on a disk opened with
discard), which is what ``virt-sparsify --in-place`` does without a second appliance launch; here
the holes are skipped and what is left is compressed, by ``recompress`` into an empty qcow2's header,
clusters in guest order on both cores, so that one disk always gives one artifact, byte for byte
(``qemu-img convert -W``, as fast, places clusters in the order its coroutines finish: three runs on one
disk gave three files). ``qemu-img convert`` in order is the fallback (compat 0.10).

Format: qcow2 compat 1.1 (readable by every QEMU since 1.1, OpenStack and oVirt; compat 0.10 only
matters for RHEL 6-era hosts), zlib compression (zstd needs QEMU >= 5.1 on every consumer, and
compressed clusters are read-only-decompressed on first write anyway) at level 4 (``recompress.LEVEL``:
a third less time than QEMU's 6 for 1.5% more bytes; the qemu-img fallback writes QEMU's 6). Written
under a temporary name, checked with ``qemu-img check`` and for the absence of a backing file, then
renamed.

A build on a cached install (a customize-only rebuild) takes the compressed clusters of the artifact
built earlier on the same installed disk wherever the guest data is the same, each compared first, and
compresses only the rest (``recompress``: 17 s → 1-1.5 s here, that artifact indexed while the
appliance boots); the whole disk goes to qemu-img when that artifact cannot be used.

When the boot test runs, the compression runs beside it (``CompressBeside``): the cells boot the
uncompressed disk through their own overlays while the compression reads the same disk, and a
compare of every cluster then proves the artifact holds the same guest data as the disk that booted
(``recompress.first_difference`` on both cores, or ``qemu-img compare``). On two
cores under TCG the two overlap by about half: a plain boot and the compression took 59 s one after the
other and 49 s side by side.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import recompress
from .content_digest import content_sha256
from .digest import hash_file
from .errors import ImageBuildError
from .events import NULL_REPORTER, Reporter
from .procs import descendants, processes_mentioning, stop_processes
from .run import run

COMPRESSION = "zlib"


@dataclass(frozen=True)
class ArtifactInfo:
    file: str
    format: str
    compat: str
    compression: str
    virtual_size: int
    file_size: int
    sha256: str
    sha512: str
    content_sha256: str = ""            # the guest-visible disk's (content_digest.py); "" in older cache entries


def image_info(path: Path, fmt: str, reporter: Reporter) -> dict:
    res = run(["qemu-img", "info", "--output=json", "-f", fmt, str(path)], reporter=reporter, log_output=False,
              purpose="read the image header")
    return json.loads(res.stdout)


def compress(src: Path, src_format: str, dest: Path, *, compat: str, reporter: Reporter,
             reuse: recompress.EarlierIndex | None = None, stop: threading.Event | None = None) -> ArtifactInfo:
    """Written by ``recompress``, in guest order on both cores, so the same disk always gives the same
    bytes (``qemu-img convert -W`` places clusters in the order its coroutines finish); ``reuse``: an
    earlier artifact of the same installed disk and compression settings (indexed in a thread since the
    build found it), whose clusters are taken where the guest data is the same. Where ``recompress``
    cannot write the format (compat 0.10), ``qemu-img convert -c``, in order for the same reason.
    ``stop`` set: raise ``CompressionStopped`` at the next batch."""
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        if not _recompressed(src, src_format, tmp, reporter, reuse=reuse, compat=compat, stop=stop):
            run(["qemu-img", "convert", "-f", src_format, "-O", "qcow2", "-c",
                 "-o", f"compat={compat},compression_type={COMPRESSION}", "-m", "8", str(src), str(tmp)],
                reporter=reporter, purpose="write the compressed qcow2")
        # the guest-visible disk's digest (hashing ~10 GiB, mostly zeros: 4-6 s) beside the checks below
        with ThreadPoolExecutor(1, thread_name_prefix="content-digest") as pool:
            content = pool.submit(content_sha256, tmp, "qcow2")
            run(["qemu-img", "check", "-q", "-f", "qcow2", str(tmp)], reporter=reporter,
                purpose="verify the qcow2 metadata")
            info = image_info(tmp, "qcow2", reporter)
            if info.get("backing-filename") or info.get("full-backing-filename"):
                raise ImageBuildError(f"{tmp} unexpectedly has a backing file")
            digests = hash_file(tmp)
            content_digest = content.result()
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ArtifactInfo(file=dest.name, format="qcow2", compat=compat, compression=COMPRESSION,
                        virtual_size=int(info["virtual-size"]), file_size=dest.stat().st_size,
                        sha256=digests["sha256"], sha512=digests["sha512"], content_sha256=content_digest)


def _recompressed(src: Path, src_format: str, tmp: Path, reporter: Reporter, *,
                  reuse: recompress.EarlierIndex | None, compat: str, stop: threading.Event | None) -> bool:
    """``tmp`` written by ``recompress``: from ``reuse``'s clusters where the guest data is the same, the
    rest compressed; without ``reuse``, every cluster compressed, into the header of an empty qcow2 of
    the same size. False (logged) where that cannot be done. A qcow2 disk (a rebuild's overlay over the
    cached install) is read where ``qemu-img map`` places its clusters; one it cannot place is read from
    a sparse raw copy."""
    raw = src.with_name(f".{src.name}.raw")
    template = tmp.with_name(f"{tmp.name}.template")
    start = time.monotonic()
    try:
        if reuse is not None:
            earlier, digests = reuse.result()
        elif compat != "1.1":
            reporter.log(f"sparsify: qemu-img writes compat {compat} (recompress writes qcow2 version 3 only)")
            return False
        else:
            size = image_info(src, src_format, reporter)["virtual-size"]
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"compat=1.1,compression_type={COMPRESSION}",
                 str(template), str(size)], reporter=reporter, purpose="the header the artifact is written into")
            earlier, digests = recompress.read_earlier(template), None
        try:
            source = recompress.raw_source(src) if src_format == "raw" else _mapped(src, src_format, reporter)
        except recompress.CannotReuse as exc:
            reporter.log(f"sparsify: reading the disk through a raw copy: {exc}")
            run(["qemu-img", "convert", "-f", src_format, "-O", "raw", str(src), str(raw)], reporter=reporter,
                purpose="the disk's guest data as a sparse raw file, to compare with the earlier artifact's")
            source = recompress.raw_source(raw)
        counts = recompress.recompress(source, earlier, tmp, digests=digests, stop=stop)
    except (recompress.CannotReuse, OSError, struct.error, zlib.error, KeyError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reporter.log("sparsify: compressing with qemu-img, not recompress"
                     + (f" (not reusing {reuse.path})" if reuse is not None else "") + f": {exc}")
        return False
    finally:
        raw.unlink(missing_ok=True)
        template.unlink(missing_ok=True)
    if reuse is not None:
        reporter.info(f"sparsify: {counts.reused + counts.kept} cluster(s) taken from the artifact built on the "
                      f"same install, {counts.compressed + counts.stored} compressed anew, {counts.zero} now zero "
                      f"({time.monotonic() - start:.1f}s)")
    else:
        reporter.info(f"sparsify: {counts.compressed + counts.stored} clusters compressed in guest order "
                      f"({time.monotonic() - start:.1f}s)")
    return True


def _mapped(src: Path, src_format: str, reporter: Reporter) -> recompress.Source:
    chain = json.loads(run(["qemu-img", "info", "--backing-chain", "--output=json", "-f", src_format, str(src)],
                           reporter=reporter, log_output=False, purpose="the disk's backing chain").stdout)
    extents = json.loads(run(["qemu-img", "map", "--output=json", "-f", src_format, str(src)], reporter=reporter,
                             log_output=False, purpose="where the disk's clusters are, layer by layer").stdout)
    files = [src.parent / layer["filename"] for layer in chain]  # absolute names stay as they are
    return recompress.mapped_source(files, extents, int(chain[0]["virtual-size"]))


def same_guest_data(src: Path, src_format: str, artifact: Path, *, reporter: Reporter = NULL_REPORTER) -> None:
    """The guest sees the same bytes in both (allocation may differ): for a raw disk and an artifact
    ``recompress`` reads, compared on both cores (``first_difference``: 4.1 s → 1.5 s, at the end of every
    boot-tested build); else ``qemu-img compare``."""
    if src_format == "raw":
        try:
            start = time.monotonic()
            offset = recompress.first_difference(src, artifact)
        except recompress.CannotReuse as exc:
            reporter.log(f"sparsify: the artifact compared by qemu-img: {exc}")
        else:
            if offset is not None:
                raise ImageBuildError(f"{artifact.name} does not hold the same guest data as the disk it was "
                                      f"compressed from ({src}): they differ in the cluster at guest offset "
                                      f"{offset}")
            reporter.log(f"sparsify: {artifact.name} holds the guest data of {src.name}, every cluster compared "
                         f"({time.monotonic() - start:.1f}s)")
            return
    res = run(["qemu-img", "compare", "-q", "-f", src_format, "-F", "qcow2", str(src), str(artifact)],
              reporter=reporter, check=False, purpose="prove the artifact holds the disk the boot test booted")
    if res.returncode == 1:
        raise ImageBuildError(f"{artifact.name} does not hold the same guest data as the disk it was "
                              f"compressed from ({src}): {res.stdout.strip() or res.stderr.strip()}")
    if res.returncode != 0:
        raise ImageBuildError(f"qemu-img compare could not read {src} and {artifact.name} "
                              f"(exit {res.returncode}): {res.stderr.strip()[-500:]}")


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


NICE_BESIDE = 19


class CompressBeside:
    """``compress`` and then ``same_guest_data`` in a thread, while the caller boots ``src`` (read-only,
    through overlays). ``result`` waits and returns the artifact's info, raising what the thread raised,
    or if ``src`` was written meanwhile; ``stop`` (a failed or interrupted boot test) stops its qemu-img
    and waits: ``compress`` then removes its partial file."""

    def __init__(self, src: Path, src_format: str, dest: Path, *, compat: str, reporter: Reporter) -> None:
        self.src, self.src_format, self.dest, self.compat, self.reporter = src, src_format, dest, compat, reporter
        self.info: ArtifactInfo | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.finished_at: float | None = None   # time.monotonic() when the artifact was ready
        self._stopping = threading.Event()
        self._stamp = _stamp(src)
        self._thread = threading.Thread(target=self._work, name="compress", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        start = time.monotonic()
        # The boot test is the critical path and the compression is not (it has the boot's length to
        # finish in): this thread, and the qemu-img it starts, yield the cores to the guests (a gain
        # within this machine's noise, docs/speed.md). On Linux a nice value is a thread's, and a child
        # inherits its thread's.
        os.setpriority(os.PRIO_PROCESS, 0, NICE_BESIDE)
        try:
            with self.reporter.step("sparsify"):
                info = compress(self.src, self.src_format, self.dest, compat=self.compat, reporter=self.reporter,
                                stop=self._stopping)
                if self._stopping.is_set():
                    raise ImageBuildError("stopped: the boot test failed or was interrupted")
                same_guest_data(self.src, self.src_format, self.dest, reporter=self.reporter)
            self.info = info
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by result()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.seconds = self.finished_at - start

    def result(self) -> ArtifactInfo:
        while self._thread.is_alive():
            self._thread.join(timeout=0.2)  # in Python, so a signal is handled at once
        if self.error is not None:
            raise self.error
        assert self.info is not None
        if _stamp(self.src) != self._stamp:
            raise ImageBuildError(f"{self.src} was written while it was being compressed and booted")
        return self.info

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._stopping.set()
        ours = set(descendants())
        stop_processes([p for p in processes_mentioning(self.dest.name) if p in ours], grace=2)
        self._thread.join(timeout=30)

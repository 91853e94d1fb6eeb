"""Launching the libguestfs appliance on a disk: the format always named, TCG forced when KVM is
unusable, the launch interruptible, the handle always closed; and launching it ahead, on a disk the
installer is still filling, so its boot under emulation overlaps the install.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import settings
from .accel import Accel
from .appliance_kernel import fixed_appliance
from .errors import ImageBuildError
from .events import NULL_REPORTER, Reporter
from .guest import Guest, kill_appliance, require_guestfs
from .procs import descendants, processes_mentioning, stop_processes
from .recipe import Firmware
from .run import call_interruptibly

APPLIANCE_VCPUS = min(2, os.cpu_count() or 1)


def _handle(disk: Path, fmt: str, *, accel: Accel, network: bool, readonly: bool, reporter: Reporter) -> Any:
    require_guestfs()
    import guestfs
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend("direct")
        conf = settings.current()
        fixed = fixed_appliance(g, cache=conf.cache, choice=conf.appliance_kernel, reporter=reporter)
        if fixed is not None:
            g.set_path(str(fixed))
            reporter.log(f"libguestfs: appliance {fixed} (its kernel unpacked: booted through PVH)")
        if accel is Accel.TCG:
            g.set_backend_settings(["force_tcg"])
        g.set_network(network)
        if not readonly:
            # two vCPUs: the boot loader's install and its configuration run side by side in it
            g.set_smp(APPLIANCE_VCPUS)
        g.add_drive_opts(str(disk), format=fmt, readonly=readonly,
                         discard="disable" if readonly else "besteffort")
    except BaseException:
        g.close()
        raise
    return g


def _launch_failed(exc: RuntimeError) -> ImageBuildError:
    return ImageBuildError(f"libguestfs could not launch its appliance: {exc} (run libguestfs-test-tool for details)")


class ApplianceAhead:
    """The libguestfs appliance booting in a thread on a disk the installer is still filling.

    Under emulation the appliance takes 20-30 s to boot, well within the time mmdebstrap takes to build the
    tree, and the two keep different cores busy. The disk file exists with its final partition table
    before the launch, so the appliance's kernel finds the right partitions; the host writes the
    filesystems into them while it boots, and nothing in the appliance mounts or writes the disk until
    ``take``. Whatever the appliance's kernel read of the still-blank partitions (udev's probe at boot)
    is gone by then: Linux drops a block device's page cache at its last close, and ``take`` also
    issues BLKFLSBUF on the disk and each partition for anything that still holds one open, so every
    later read comes from the file. The raw disk has no cache of its own in QEMU, and the host's page
    cache is shared by both writers. The installer's ``finalize`` checks the UUID the appliance reads
    against the one the host wrote.
    """

    def __init__(self, disk: Path, fmt: str, *, accel: Accel, reporter: Reporter, network: bool,
                 firmware: Firmware, host_writes: bool = True) -> None:
        self.disk, self.reporter, self.firmware = disk, reporter, firmware
        self.host_writes = host_writes  # False: a cached install's overlay, which nothing writes meanwhile
        self.g = _handle(disk, fmt, accel=accel, network=network, readonly=False, reporter=reporter)
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self._error: RuntimeError | None = None
        self._closed = False
        reporter.log(f"libguestfs: launching the appliance ahead for {disk} (format {fmt}, {accel}, "
                     f"network {'on' if network else 'off'}) while the install fills it")
        self._thread = threading.Thread(target=self._launch, name="libguestfs-launch", daemon=True)
        self._thread.start()

    def _launch(self) -> None:
        try:
            self.g.launch()
        except RuntimeError as exc:
            self._error = exc
        self.ready_after = time.monotonic() - self.started

    def take(self) -> Guest:
        """Wait for the launch to finish; the appliance, its view of the disk refreshed."""
        t = time.monotonic()
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.2)  # in Python, so a signal is handled at once
        except BaseException:
            self.close()
            raise
        if self._error is not None:
            raise _launch_failed(self._error)
        self.reporter.info(f"appliance ready {self.ready_after:.0f}s after its launch ahead "
                           f"(waited {time.monotonic() - t:.0f}s for it here)")
        guest = Guest(self.g, self.reporter, self.firmware)
        if self.host_writes:
            guest.drop_cached_reads()
        return guest

    def close(self) -> None:
        """Stop the appliance if it is still booting (a failed or interrupted install) and close the handle."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            ours = set(descendants())
            stop_processes([p for p in processes_mentioning(str(self.disk)) if p in ours], grace=2)
            self._thread.join(timeout=30)
        self.g.close()


@contextmanager
def open_guest(disk: Path, fmt: str, *, accel: Accel, reporter: Reporter = NULL_REPORTER,
               network: bool = False, readonly: bool = False, mount: bool = True,
               firmware: Firmware = Firmware.BIOS, ahead: ApplianceAhead | None = None,
               layout_known: bool = False) -> Iterator[Guest]:
    """Launch the appliance on ``disk`` (format named: never probed) and mount its root (and ESP); the
    disk must have the layout of ``firmware``. ``ahead``: the appliance already launching on that disk.
    ``layout_known`` (or ``ahead``): the disk is one the installer assembled and checked, so it is mounted
    by its layout's partition numbers (``Guest.mount_layout``) instead of being probed whole (3-5 s
    under emulation); the caller's post-check still probes it before anything ships."""
    if ahead is not None:
        g, close = ahead.g, ahead.close
    else:
        g = _handle(disk, fmt, accel=accel, network=network, readonly=readonly, reporter=reporter)
        close = g.close
    try:
        if ahead is not None:
            guest = ahead.take()
        else:
            reporter.log(f"libguestfs: launching appliance for {disk} (format {fmt}, {accel}, "
                         f"network {'on' if network else 'off'})")
            guest = Guest(g, reporter, firmware)
            try:
                call_interruptibly(g.launch, on_interrupt=kill_appliance)
            except RuntimeError as exc:
                raise _launch_failed(exc) from None
        if mount and (ahead is not None or layout_known):
            guest.mount_layout()   # the install assembled and checked this disk (moments or builds ago)
        elif mount:
            guest.mount_root()
        yield guest
        if not readonly:
            g.umount_all()
            g.shutdown()  # flushes and reports write errors, unlike close()
    finally:
        close()

"""Decide KVM or TCG by trying, not by looking at /dev/kvm.

On some hosts /dev/kvm opens and KVM_CREATE_VM succeeds, yet a real guest never gets past early boot
(even a boot sector runs; a Linux kernel does not). The probe therefore boots the host's own kernel with
no root filesystem under KVM, bounded by a short timeout: a working KVM reaches "Kernel panic" in a
second or two. The answer is cached per host boot, since it cannot change before a reboot.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from enum import StrEnum

from .errors import ToolMissing
from .events import NULL_REPORTER, Reporter
from .paths import cache_root
from .procs import boot_id
from .run import run
from .settings import current

PROBE_TIMEOUT_SECONDS = 20


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str

    @property
    def libvirt_domain_type(self) -> str:
        return "kvm" if self.accel is Accel.KVM else "qemu"


def _probe_kernel() -> str | None:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    return kernels[-1] if kernels else None


def probe_kvm(reporter: Reporter = NULL_REPORTER) -> AccelChoice:
    if current().accel:
        forced = Accel(current().accel)
        return AccelChoice(forced, f"forced by IMAGEBUILD_ACCEL={forced}")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice(Accel.TCG, "/dev/kvm is missing or not accessible")
    kernel = _probe_kernel()
    if kernel is None:
        raise ToolMissing("no kernel in /boot/vmlinuz-* to probe KVM with (install linux-image-amd64), "
                          "or set IMAGEBUILD_ACCEL=tcg")
    res = run(["qemu-system-x86_64", "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none",
               "-no-reboot", "-m", "256", "-serial", "stdio", "-kernel", kernel,
               "-append", "console=ttyS0 panic=-1 loglevel=3"],
              check=False, timeout=PROBE_TIMEOUT_SECONDS, reporter=reporter, log_output=False,
              purpose="probe whether KVM can really run a guest")
    if "Kernel panic" in res.stdout:
        return AccelChoice(Accel.KVM, "a probe kernel booted under KVM")
    if res.timed_out:
        return AccelChoice(Accel.TCG, f"a probe kernel under KVM made no progress in {PROBE_TIMEOUT_SECONDS}s: "
                                      "KVM is unusable here")
    return AccelChoice(Accel.TCG, f"the KVM probe exited {res.returncode} without booting: KVM is unusable here")


def choose_accel(reporter: Reporter = NULL_REPORTER) -> AccelChoice:
    """The accelerator for every guest and for libguestfs, decided once per host boot."""
    if current().accel:
        return probe_kvm(reporter)
    path = cache_root() / "accel.json"
    boot = boot_id()
    try:
        cached = json.loads(path.read_text())
        if cached.get("boot_id") == boot:
            return AccelChoice(Accel(cached["accel"]), cached["reason"] + " (cached for this host boot)")
    except (OSError, ValueError, KeyError):
        pass
    choice = probe_kvm(reporter)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"boot_id": boot, "accel": str(choice.accel), "reason": choice.reason}))
    tmp.rename(path)
    return choice

from __future__ import annotations

import time

import pytest

from imagebuild.accel import PROBE_TIMEOUT_SECONDS, Accel, probe_kvm

pytestmark = pytest.mark.vm


def test_kvm_probe_is_bounded_and_explains_itself(monkeypatch):
    monkeypatch.delenv("IMAGEBUILD_ACCEL", raising=False)
    t = time.monotonic()
    choice = probe_kvm()
    assert time.monotonic() - t < PROBE_TIMEOUT_SECONDS + 15
    assert choice.accel in (Accel.KVM, Accel.TCG) and choice.reason
    assert choice.libvirt_domain_type == ("kvm" if choice.accel is Accel.KVM else "qemu")


def test_accel_can_be_forced(monkeypatch):
    monkeypatch.setenv("IMAGEBUILD_ACCEL", "tcg")
    assert probe_kvm().accel is Accel.TCG

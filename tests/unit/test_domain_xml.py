from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagebuild.accel import Accel
from imagebuild.domain import DiskSpec, DomainSpec, domain_xml, random_mac

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if intended"


def test_boot_test_domain_xml_golden():
    spec = DomainSpec(name="imagebuild-debian12-x-boot", accel=Accel.TCG, memory_mib=1024, vcpus=2,
                      disks=(DiskSpec(Path("/w/overlay.qcow2"), "qcow2"),),
                      console_log=Path("/o/boot-console.log"), mac="52:54:00:12:34:56")
    check_golden("boottest-domain.xml", domain_xml(spec))


def test_installer_domain_xml_golden():
    spec = DomainSpec(name="imagebuild-centos7-x-install", accel=Accel.KVM, memory_mib=2048, vcpus=2,
                      disks=(DiskSpec(Path("/w/disk.qcow2"), "qcow2"),), console_log=Path("/w/console.log"),
                      mac="52:54:00:ab:cd:ef", kernel=Path("/c/vmlinuz"), initrd=Path("/w/initrd.img"),
                      cmdline="inst.ks=file:/ks.cfg console=ttyS0,115200n8", guest_agent=False,
                      extra_channels=(("org.fedoraproject.anaconda.log.0", Path("/w/anaconda.sock")),))
    check_golden("install-domain.xml", domain_xml(spec))


def test_random_macs_are_fresh_and_in_qemu_range():
    macs = {random_mac() for _ in range(200)}
    assert len(macs) == 200
    assert all(m.startswith("52:54:00:") and len(m) == 17 for m in macs)

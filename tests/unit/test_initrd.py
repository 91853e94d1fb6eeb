from __future__ import annotations

import gzip
import subprocess

import pytest

from imagebuild.install.initrd import inject, newc_archive

pytestmark = pytest.mark.unit


def test_newc_archive_is_read_by_cpio(tmp_path):
    data = newc_archive({"ks.cfg": (b"text\ncmdline\n", 0o600), "x/y": (b"", 0o644)})
    assert len(data) % 4 == 0
    listing = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=data, capture_output=True, check=True).stdout
    assert b"ks.cfg" in listing and b"-rw-------" in listing
    subprocess.run(["cpio", "-i", "--quiet", "-d", "--no-absolute-filenames"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "ks.cfg").read_bytes() == b"text\ncmdline\n"


def test_inject_appends_after_the_original_and_keeps_it(tmp_path):
    original = tmp_path / "initrd.img"
    base = newc_archive({"init": (b"#!/bin/sh\n", 0o755)})
    original.write_bytes(gzip.compress(base) + b"\0" * 3)  # odd length: the next archive must be aligned
    before = original.read_bytes()
    out = inject(original, {"ks.cfg": (b"poweroff\n", 0o600)}, tmp_path / "out.img")
    blob = out.read_bytes()
    assert blob.startswith(before) and original.read_bytes() == before
    tail = blob[len(before):]
    start = tail.index(b"070701")
    assert (len(before) + start) % 4 == 0
    assert b"ks.cfg" in tail and b"poweroff\n" in tail
    assert (out.stat().st_mode & 0o777) == 0o600

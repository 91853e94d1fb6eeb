"""Against Debian's real mirror: the bookworm installer's SHA256SUMS is vouched for by the suite's
InRelease, signed by keys in the host's debian-archive-keyring (the mirror serves the index and
InRelease here, but not the netboot files, so nothing is booted)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from imagebuild.events import Reporter
from imagebuild.install.media import resolve_boot_files
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.build


def test_bookworm_installer_index_is_signed_by_the_debian_archive(tmp_path):
    recipe = load_recipe("debian12-preseed")
    vm = dataclasses.replace(recipe.install.vm, media_trust="signed", kernel_sha256="", initrd_sha256="")
    recipe = dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))
    log = tmp_path / "media.log"
    reporter = Reporter(stream=open("/dev/null", "w"))  # noqa: SIM115
    reporter.attach(log)
    kernel, initrd, source = resolve_boot_files(recipe, reporter=reporter)
    reporter.close()
    assert source == "SHA256SUMS"
    for bf in (kernel, initrd):
        assert re.fullmatch(r"[0-9a-f]{64}", bf.listed_sha256 or ""), bf
        assert bf.signed_by.startswith("http://deb.debian.org/debian/dists/bookworm/InRelease")
        assert "Debian" in bf.signed_by
    assert "$ gpgv --status-fd 1 --keyring /usr/share/keyrings/debian-archive-keyring.gpg" in log.read_text()

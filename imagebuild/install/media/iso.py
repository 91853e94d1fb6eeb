"""Installing from an ISO: its pin checked against the distribution's clearsigned checksum list, the
ISO fetched into the cache, and the installer's kernel and initrd read out of it with xorriso."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...events import NULL_REPORTER, Reporter
from ...mirrors import rewrite_url
from ...recipe import Recipe
from ...run import run
from .download import fetch, fetch_bytes, file_name
from .errors import ChecksumMismatch, MediaError
from .firstuse import first_use
from .signature import DEBIAN_KEYRING, gpgv_verify, usable_keyring
from .tree import BootFile, BootMedia, boot_file_paths, parse_sha256sums


@dataclass(frozen=True)
class IsoSource:
    url: str
    sha256: str          # what the download is held to: the pin, or the signed list's under "signed"; "" = none
    listed_sha256: str   # what the signed checksum list says ("" without one)
    signed_by: str       # that list and its signer


def resolve_iso(recipe: Recipe, *, mirrors: Mapping[str, str] | None = None,
                reporter: Reporter = NULL_REPORTER, timeout: float = 30.0) -> IsoSource:
    """The ISO's pin, checked against the distribution's clearsigned checksum list when the recipe
    names one (``install.vm.iso_checksums_url``), before the large download starts."""
    vm = recipe.install.vm
    url = rewrite_url(vm.iso_url, mirrors)
    pin, signed_by, listed = vm.iso_sha256, "", ""
    if vm.iso_checksums_url:
        sums_url = rewrite_url(vm.iso_checksums_url, mirrors)
        keyring = usable_keyring(vm.keyring or DEBIAN_KEYRING)
        text, signers = gpgv_verify(fetch_bytes(sums_url, timeout=timeout), keyring, reporter=reporter,
                                    what=sums_url)
        name = file_name(url)
        listed = parse_sha256sums(text).get(name, "")
        if not listed:
            raise MediaError(f"the signed {sums_url} lists no sha256 for {name}")
        if pin and pin != listed:
            raise ChecksumMismatch(f"the signed {sums_url} lists sha256 {listed} for {name}, but the recipe "
                                   f"pins {pin} (install.vm.iso_sha256): the ISO or the pin is wrong")
        signed_by = f"{sums_url} (gpgv: {signers[0]})"
        reporter.info(f"{name}: sha256 {listed} is in {sums_url}, signed by {signers[0]}")
        if not pin and vm.media_trust == "signed":
            pin = listed
    elif vm.media_trust == "signed":
        raise MediaError("install.vm.media_trust = 'signed' with an ISO needs install.vm.iso_checksums_url "
                         "(the distribution's clearsigned checksum list)")
    return IsoSource(url, pin, listed, signed_by)


def extract_from_iso(iso: Path, members: Mapping[str, str], dest: Path, *,
                     reporter: Reporter = NULL_REPORTER) -> dict[str, Path]:
    """Copy files out of an ISO 9660 image with xorriso (no mount, no loop device): ``{name: path in
    the ISO}`` -> ``{name: file under dest}``."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = ["xorriso", "-osirrox", "on", "-indev", str(iso)]
    out = {}
    for name, member in members.items():
        out[name] = dest / name
        out[name].unlink(missing_ok=True)
        argv += ["-extract", "/" + member.lstrip("/"), str(out[name])]
    res = run(argv, reporter=reporter, check=False, purpose="read the installer's kernel and initrd out of the ISO")
    missing = [members[n] for n, p in out.items() if not p.is_file()]
    if res.returncode != 0 or missing:
        raise MediaError(f"{iso.name} has no {', '.join(missing) or 'readable files'} "
                         f"(set install.vm.kernel / install.vm.initrd to their paths in the ISO)")
    for p in out.values():
        p.chmod(0o644)  # ISO files are read-only; the build dir must stay removable
    return out


def boot_from_iso(recipe: Recipe, root: Path, scratch: Path, *, mirrors: Mapping[str, str] | None,
                   reporter: Reporter, timeout: float) -> BootMedia:
    src = resolve_iso(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
    url, pin, signed_by = src.url, src.sha256, src.signed_by
    if not pin:
        if recipe.install.vm.media_trust != "first-use":
            raise MediaError("install.vm.iso_sha256 is not pinned: a build boots only pinned media. Verify "
                             "the ISO's sha256 (`invoke pin` prints it) and write it into the recipe.")
        pin = first_use(BootFile("iso", file_name(url), url, "", src.listed_sha256 or None), root,
                         reporter=reporter, timeout=timeout).sha256
    iso = fetch(url, pin, cache_dir=root, reporter=reporter, timeout=timeout)
    kernel_path, initrd_path = boot_file_paths(recipe)
    files = extract_from_iso(iso, {"iso-kernel": kernel_path, "iso-initrd": initrd_path}, scratch,
                             reporter=reporter)
    return BootMedia(files["iso-kernel"], files["iso-initrd"], f"{url}!/{kernel_path}", f"{url}!/{initrd_path}",
                     "iso", hashlib.sha256(files["iso-kernel"].read_bytes()).hexdigest(),
                     hashlib.sha256(files["iso-initrd"].read_bytes()).hexdigest(), signed_by, iso, pin)

"""The installer's kernel and initrd a recipe boots: the recipe's pins cross-checked with the tree's index
(and that index with the signed archive) before the large download starts, then fetched and verified;
``pin_boot_files`` downloads them unpinned and prints their sha256 for a person to write into the recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urljoin

from ...events import NULL_REPORTER, Reporter
from ...recipe import Recipe
from .download import fetch, fetch_bytes, file_name, media_cache_dir
from .errors import ChecksumMismatch, MediaError, SignatureError
from .firstuse import download_unverified, first_use
from .iso import boot_from_iso, resolve_iso
from .signature import DEBIAN_KEYRING, authenticate_index
from .tree import BootFile, BootMedia, boot_file_paths, parse_sha256sums, parse_treeinfo, tree_index, tree_url


def resolve_boot_files(recipe: Recipe, *, mirrors: Mapping[str, str] | None = None,
                       reporter: Reporter = NULL_REPORTER, timeout: float = 30.0
                       ) -> tuple[BootFile, BootFile, str]:
    """Read the tree's index and cross-check it with the pins before anything large is downloaded.

    Returns (kernel, initrd, index name or "" when the tree has none and the recipe names the paths).
    """
    vm = recipe.install.vm
    tree = tree_url(recipe, mirrors)
    index = tree_index(recipe)
    kernel_path, initrd_path = boot_file_paths(recipe)
    listed: dict[str, str] = {}
    raw = b""
    try:
        raw = fetch_bytes(urljoin(tree, index), timeout=timeout)
        text = raw.decode("utf-8", errors="replace")
    except MediaError as exc:
        if "HTTP 404" not in str(exc) or not (vm.kernel and vm.initrd):
            raise
        reporter.info(f"the tree has no {index}; relying on the recipe's pins alone")
        index, text = "", ""
    if index == ".treeinfo":
        info = parse_treeinfo(text, source=urljoin(tree, index))
        for role, mine, theirs in (("kernel", vm.kernel, info.kernel), ("initrd", vm.initrd, info.initrd)):
            if mine and theirs and mine != theirs:
                reporter.info(f"warning: the recipe boots {mine} but .treeinfo names {theirs} as the {role}")
        kernel_path = vm.kernel or info.kernel or kernel_path
        initrd_path = vm.initrd or info.initrd or initrd_path
        listed = {p: d for p in (kernel_path, initrd_path) if (d := info.sha256(p) or "")}
    elif index == "SHA256SUMS":
        listed = parse_sha256sums(text)
    signed_by = ""
    if index == "SHA256SUMS":
        try:
            signed_by = authenticate_index(tree, index, raw, vm.keyring or DEBIAN_KEYRING,
                                           reporter=reporter, timeout=timeout)
        except (SignatureError, ChecksumMismatch):
            raise  # evidence of tampering (or of the wrong keyring): never build on it
        except MediaError as exc:
            if vm.media_trust == "signed":
                raise
            reporter.info(f"warning: {exc}; relying on the recipe's pins")
    if vm.media_trust == "signed" and not signed_by:
        raise MediaError(f"install.vm.media_trust = 'signed' needs a tree whose checksum index is signed "
                         f"(a Debian dists/<suite>/ tree with InRelease); {tree} has none")
    files = []
    wanted = (("kernel", kernel_path, vm.kernel_sha256), ("initrd", initrd_path, vm.initrd_sha256))
    for role, path, pin in wanted:
        bf = BootFile(role, path, urljoin(tree, path), pin, listed.get(path), signed_by)
        if bf.sha256 and bf.listed_sha256 and bf.sha256 != bf.listed_sha256:
            raise ChecksumMismatch(
                f"the tree's {index} lists sha256 {bf.listed_sha256} for {path}, but the recipe pins "
                f"{bf.sha256} (install.vm.{role}_sha256): the tree has changed or the pin is wrong")
        if index and not bf.listed_sha256:
            reporter.log(f"{index} has no sha256 for {path}; relying on the recipe's pin alone")
        files.append(bf)
    return files[0], files[1], index if listed else ""


def fetch_boot_files(recipe: Recipe, *, cache_dir: Path | None = None,
                     mirrors: Mapping[str, str] | None = None, reporter: Reporter = NULL_REPORTER,
                     timeout: float = 60.0, scratch: Path | None = None) -> BootMedia:
    """Fetch (or take from the cache, re-verified) the installer kernel and initrd a recipe boots.

    Unpinned media are refused, unless the recipe opts into ``install.vm.media_trust = "first-use"``:
    then the first download's sha256 is recorded in the cache (``first-use-pins.json``) and every later
    build verifies against it, as SSH does with host keys; the manifest records the hash either way.
    """
    root = cache_dir if cache_dir is not None else media_cache_dir()
    if recipe.install.vm.iso_url:
        if scratch is None:
            raise ValueError("an ISO install needs a scratch dir for the kernel and initrd read out of it")
        return boot_from_iso(recipe, root, scratch, mirrors=mirrors, reporter=reporter, timeout=timeout)
    kernel, initrd, source = resolve_boot_files(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
    resolved = []
    trust = recipe.install.vm.media_trust
    for bf in (kernel, initrd):
        if not bf.sha256 and trust == "signed":
            if not bf.listed_sha256:
                raise MediaError(f"the signed {source} lists no sha256 for {bf.path}: nothing vouches for it")
            reporter.info(f"{bf.role} {bf.path}: sha256 {bf.listed_sha256} from the signed {source}")
            bf = dataclasses.replace(bf, sha256=bf.listed_sha256)
        if not bf.sha256:
            if trust != "first-use":
                hint = f" The tree's {source} lists {bf.listed_sha256}." if bf.listed_sha256 else ""
                raise MediaError(f"install.vm.{bf.role}_sha256 is not pinned: a build boots only pinned "
                                 f"media.{hint} Verify the value (pin_boot_files downloads and hashes it) "
                                 "and write it into the recipe.")
            bf = first_use(bf, root, reporter=reporter, timeout=timeout)
        resolved.append(bf)
    paths = [fetch(bf.url, bf.sha256, cache_dir=root, reporter=reporter, timeout=timeout) for bf in resolved]
    return BootMedia(paths[0], paths[1], kernel.url, initrd.url, source, resolved[0].sha256, resolved[1].sha256,
                     kernel.signed_by)


def pin_boot_files(recipe: Recipe, *, cache_dir: Path | None = None,
                   mirrors: Mapping[str, str] | None = None, reporter: Reporter = NULL_REPORTER,
                   timeout: float = 60.0) -> dict[str, str]:
    """Download the kernel and initrd without pins and return their sha256 for a person to verify.

    Returns ``{"kernel_sha256": ..., "initrd_sha256": ...}`` (TOML-ready). A value that disagrees with
    the tree's own checksum list raises ``ChecksumMismatch``. The files land in the cache under their
    hash, so the first pinned build does not download them again.
    """
    root = cache_dir if cache_dir is not None else media_cache_dir()
    if recipe.install.vm.iso_url:
        src = resolve_iso(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
        digest = download_unverified(BootFile("iso", file_name(src.url), src.url, "", src.listed_sha256 or None),
                                      root, reporter=reporter, timeout=timeout,
                                      source=recipe.install.vm.iso_checksums_url)
        origin = f" (matches the signed {src.signed_by})" if src.signed_by else " (no signed checksum list)"
        reporter.info(f"ISO {src.url}: sha256 {digest}{origin}")
        return {"iso_sha256": digest}
    kernel, initrd, source = resolve_boot_files(recipe, mirrors=mirrors, reporter=reporter, timeout=timeout)
    pins: dict[str, str] = {}
    for bf in (kernel, initrd):
        digest = download_unverified(bf, root, reporter=reporter, timeout=timeout, source=source)
        origin = f" (matches the tree's {source})" if bf.listed_sha256 else " (the tree lists no checksum)"
        if bf.signed_by and bf.listed_sha256:
            origin = f" (matches the tree's {source}, whose sha256 is in the signed {bf.signed_by})"
        reporter.info(f"{bf.role} {bf.url}: sha256 {digest}{origin}")
        pins[f"{bf.role}_sha256"] = digest
    return pins

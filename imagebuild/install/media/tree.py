"""Install trees: where the installer's kernel and initrd are (``.treeinfo`` for EL, the netboot layout
for Debian) and what the tree's own checksum index (``.treeinfo``'s ``[checksums]``, ``SHA256SUMS``)
says about them; the records of the files a build boots."""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...answerfile import AnswerFileKind, answer_file_kind
from ...mirrors import rewrite_url
from ...recipe import Recipe
from .errors import MediaError

# Where an install tree keeps the installer's kernel and initrd when the recipe does not say.
EL_KERNEL = "images/pxeboot/vmlinuz"
EL_INITRD = "images/pxeboot/initrd.img"
DEBIAN_KERNEL = "netboot/debian-installer/amd64/linux"
DEBIAN_INITRD = "netboot/debian-installer/amd64/initrd.gz"
DEBIAN_ISO_KERNEL = "install.amd/vmlinuz"   # on a debian-cd netinst/DVD image
DEBIAN_ISO_INITRD = "install.amd/initrd.gz"
def tree_index(recipe: Recipe) -> str:
    """The tree's checksum index follows the installer: anaconda trees have .treeinfo, d-i SHA256SUMS."""
    return ".treeinfo" if answer_file_kind(recipe) is AnswerFileKind.KICKSTART else "SHA256SUMS"


@dataclass(frozen=True)
class TreeInfo:
    """What an EL tree's ``.treeinfo`` says (the old format and productmd's 1.x both)."""
    family: str
    version: str
    arch: str
    kernel: str | None
    initrd: str | None
    stage2: str | None
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (algorithm, hex)

    def sha256(self, path: str) -> str | None:
        algo, digest = self.checksums.get(path, ("", ""))
        return digest if algo == "sha256" else None


def parse_treeinfo(text: str, *, arch: str = "x86_64", source: str = ".treeinfo") -> TreeInfo:
    cp = configparser.RawConfigParser(strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive paths
    try:
        cp.read_string(text, source)
    except configparser.Error as exc:
        raise MediaError(f"{source} is not a valid .treeinfo: {exc}") from None

    def get(section: str, key: str) -> str | None:
        value = cp.get(section, key, fallback=None)
        return value.strip() if value and value.strip() else None

    tree_arch = get("tree", "arch") or get("general", "arch") or arch
    if tree_arch != arch:
        raise MediaError(f"{source} describes an {tree_arch} tree, not {arch}")
    section = f"images-{arch}"
    if not cp.has_section(section):
        raise MediaError(f"{source} has no [{section}] section: not an installable {arch} tree")
    checksums: dict[str, tuple[str, str]] = {}
    if cp.has_section("checksums"):
        for path, value in cp.items("checksums"):
            algo, sep, digest = value.partition(":")
            if sep:
                checksums[path] = (algo.strip().lower(), digest.strip().lower())
    return TreeInfo(
        family=get("general", "family") or get("release", "name") or "",
        version=get("general", "version") or get("release", "version") or "",
        arch=tree_arch,
        kernel=get(section, "kernel"),
        initrd=get(section, "initrd"),
        stage2=get("stage2", "mainimage"),
        checksums=checksums,
    )


def parse_sha256sums(text: str) -> dict[str, str]:
    """``sha256sum`` output (Debian's installer ``SHA256SUMS``): path (without ``./``) -> hex."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(?:\./)?(\S.*)$", line.strip())
        if m:
            sums[m.group(2)] = m.group(1).lower()
    return sums


def tree_url(recipe: Recipe, mirrors: Mapping[str, str] | None) -> str:
    url = rewrite_url(recipe.install.vm.tree_url, mirrors)
    return url if url.endswith("/") else url + "/"


def boot_file_paths(recipe: Recipe) -> tuple[str, str]:
    """The kernel and initrd paths inside the tree: the recipe's, else the family's usual layout."""
    vm = recipe.install.vm
    if tree_index(recipe) == ".treeinfo":
        return vm.kernel or EL_KERNEL, vm.initrd or EL_INITRD
    if vm.iso_url:
        return vm.kernel or DEBIAN_ISO_KERNEL, vm.initrd or DEBIAN_ISO_INITRD
    return vm.kernel or DEBIAN_KERNEL, vm.initrd or DEBIAN_INITRD


@dataclass(frozen=True)
class BootFile:
    role: str                    # "kernel" or "initrd"
    path: str                    # inside the tree
    url: str
    sha256: str                  # the recipe's pin ("" when not pinned)
    listed_sha256: str | None    # what the tree's index (.treeinfo / SHA256SUMS) says, if anything
    signed_by: str = ""          # the signed file that vouches for that index, if any (Debian InRelease)


@dataclass(frozen=True)
class BootMedia:
    """The verified installer kernel and initrd in the cache, ready to boot."""
    kernel: Path
    initrd: Path
    kernel_url: str
    initrd_url: str
    checksum_source: str         # which index was cross-checked, or "" if the tree had none
    kernel_sha256: str = ""      # what was verified (the pin, the signed index, or the first-use record)
    initrd_sha256: str = ""
    signed_by: str = ""          # the signed file that vouched for the tree's index, if any
    iso: Path | None = None      # the verified install ISO (attached as the CD-ROM), when installing from one
    iso_sha256: str = ""

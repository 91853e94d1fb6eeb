"""Install media: download with resume into a content-addressed cache, verify on every use, and find the
installer kernel and initrd of an install tree (``.treeinfo`` for EL, the netboot layout for Debian).

The recipe pins the sha256 of every file a build boots (``install.vm.kernel_sha256``/``initrd_sha256``);
that pin is the trust anchor, whatever mirror serves the file. The tree's own checksum list (the
``[checksums]`` of ``.treeinfo``, Debian's ``SHA256SUMS``) is checked against the pin as well, before
the large download starts, so a moved tree is reported as such.

- ``errors.py``: ``MediaError`` and its kinds (a bad signature, a checksum mismatch)
- ``download.py``: the content-addressed cache, resumed downloads, small index files
- ``signature.py``: Debian's signed ``InRelease`` (gpgv, the keyring) vouching for a tree's index
- ``tree.py``: install trees: ``.treeinfo``, ``SHA256SUMS``, where the kernel and initrd are
- ``firstuse.py``: trust on first use for unpinned media, and the unverified download ``invoke pin`` hashes
- ``iso.py``: installing from an ISO: its signed checksum list, reading the kernel and initrd out of it
- ``boot.py``: the kernel and initrd a build boots: pins cross-checked, fetched, verified; ``pin_boot_files``
"""

from __future__ import annotations

from ...mirrors import rewrite_url, site_mirrors
from .boot import fetch_boot_files, pin_boot_files, resolve_boot_files
from .download import CHUNK, MAX_INDEX_BYTES, SHA256_RE, USER_AGENT, fetch, fetch_bytes, media_cache_dir
from .errors import ChecksumMismatch, MediaError, SignatureError
from .iso import IsoSource, extract_from_iso, resolve_iso
from .signature import DEBIAN_KEYRING, authenticate_index, dists_split, gpgv_verify, release_sha256, usable_keyring
from .tree import (
    DEBIAN_INITRD,
    DEBIAN_ISO_INITRD,
    DEBIAN_ISO_KERNEL,
    DEBIAN_KERNEL,
    EL_INITRD,
    EL_KERNEL,
    BootFile,
    BootMedia,
    TreeInfo,
    boot_file_paths,
    parse_sha256sums,
    parse_treeinfo,
    tree_index,
)

__all__ = [
    "CHUNK", "DEBIAN_INITRD", "DEBIAN_ISO_INITRD", "DEBIAN_ISO_KERNEL", "DEBIAN_KERNEL", "DEBIAN_KEYRING",
    "EL_INITRD", "EL_KERNEL", "MAX_INDEX_BYTES", "SHA256_RE", "USER_AGENT", "BootFile", "BootMedia",
    "ChecksumMismatch", "IsoSource", "MediaError", "SignatureError", "TreeInfo", "authenticate_index",
    "boot_file_paths", "dists_split", "extract_from_iso", "fetch", "fetch_boot_files", "fetch_bytes",
    "gpgv_verify", "media_cache_dir", "parse_sha256sums", "parse_treeinfo", "pin_boot_files", "release_sha256",
    "resolve_boot_files", "resolve_iso", "rewrite_url", "site_mirrors", "tree_index", "usable_keyring",
]

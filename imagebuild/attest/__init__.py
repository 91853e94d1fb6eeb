"""Attestations of a built image: SBOMs (SPDX 2.3, CycloneDX 1.6), in-toto statements (SLSA v1
provenance, the boot test), DSSE envelopes and a detached signature, all signed with a local ed25519
key. Library only: the build decides when to call it."""

from .dpkg import DebPackage, installed_packages
from .dsse import (
    keyid,
    load_private_key,
    load_public_key,
    pae,
    public_key_openssh,
    sign_envelope,
    sign_file,
    sign_statement,
    verify_envelope,
    verify_file,
    verify_statement,
)
from .errors import AttestationError, SignatureInvalid, SigningKeyError, VerifyFailed
from .sbom import cached_deb_sha256, created_time, cyclonedx_json, purl, spdx_json, validate_sbom
from .statement import boot_test, provenance, statement_bytes, subjects

__all__ = [
    "AttestationError", "DebPackage", "SignatureInvalid", "SigningKeyError", "VerifyFailed", "boot_test",
    "cached_deb_sha256", "created_time", "cyclonedx_json", "installed_packages", "keyid", "load_private_key",
    "load_public_key", "pae", "provenance", "public_key_openssh", "purl", "sign_envelope", "sign_file",
    "sign_statement", "spdx_json", "statement_bytes", "subjects", "validate_sbom", "verify_envelope",
    "verify_file", "verify_statement",
]

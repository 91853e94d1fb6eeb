"""The attestation errors. ``AttestationError`` is an ``ImageBuildError`` (exit code 9): a document that
cannot be made or a signature that does not verify. Each names the file it is about."""

from __future__ import annotations

from pathlib import Path

from ..errors import ImageBuildError


class AttestationError(ImageBuildError):
    """An SBOM, provenance statement or signature cannot be made or does not verify."""

    exit_code = 9

    def __init__(self, message: str, *, file: Path | str | None = None) -> None:
        self.file = str(file) if file is not None else None
        super().__init__(f"{self.file}: {message}" if self.file else message)


class SigningKeyError(AttestationError):
    """The key file is missing, unreadable, not an ed25519 key, or not the key that signed."""


class SignatureInvalid(AttestationError):
    """A signature is corrupt, or what it signs was changed after signing."""


class VerifyFailed(AttestationError):
    """A build's output does not check out: a file missing or not what SHA256SUMS, the manifest or a
    statement says (``imagebuild.verify``)."""

"""The environment, read once: every ``IMAGEBUILD_*`` variable in one frozen, validated ``Settings``.

mkosi reads its environment at the edge; so do we. ``tasks.py`` builds the settings from ``os.environ``
when a task starts and installs them with ``configure``; library code asks ``current()`` and never
reads a variable itself, so a typo (``IMAGEBUILD_ACCEL=kvmm``, ``IMAGEBUILD_OUPUT=...``) is an error
before anything starts instead of being ignored. Library callers that never call ``configure`` (tests,
scripts) get the environment read at the moment they ask.

Secrets are not settings: the root password variable a recipe names (``install.vm.root_password_env``,
by default ``IMAGEBUILD_ROOT_PASSWORD``) is read only where the answer file is made, and never stored.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .cache import parse_size
from .errors import ImageBuildError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# name → what it sets (the README's table of variables says the same)
VARIABLES = {
    "IMAGEBUILD_OUTPUT": "where finished builds go (default: output/ in the project)",
    "IMAGEBUILD_WORK": "scratch space for builds, ~4 GiB (default: work/ in the project)",
    "IMAGEBUILD_WORK_TMPFS": "auto: each build's work dir is a tmpfs under IMAGEBUILD_WORK when the host's free "
                             "memory holds its worst case with room for the guests (docs/speed.md); off: on disk "
                             "(default: auto)",
    "IMAGEBUILD_CACHE": "what outlives builds: media, apt cache, KVM answer (default: $XDG_CACHE_HOME/imagebuild)",
    "IMAGEBUILD_CACHE_MAX": "size cap of the stage cache, least recently used entries go first (default: 20G)",
    "IMAGEBUILD_ACCEL": "force the accelerator: kvm or tcg (default: a bounded probe decides)",
    "IMAGEBUILD_RECIPE_PATH": "colon-separated directories searched for recipes before recipes/",
    "IMAGEBUILD_TEMPLATE_PATH": "colon-separated directories searched for answer-file templates before kickstart/",
    "IMAGEBUILD_MIRRORS": "site mirrors: space-separated FROM=TO URL prefixes (docs/answer-files.md)",
    "IMAGEBUILD_VENV": "the venv ./inv makes and uses (default: .venv in the project)",
    "IMAGEBUILD_APPLIANCE_KERNEL": "pvh: libguestfs boots its kernel unpacked, 5-6 s faster under emulation; "
                                   "packaged: as shipped (default: pvh, or packaged where the kernel cannot)",
    "IMAGEBUILD_ROOT_PASSWORD": "the root password of VM installs (a secret: hashed, never stored)",
    "IMAGEBUILD_SIGNING_KEY": "an ed25519 private key file (OpenSSH or PEM, unencrypted): builds sign their "
                              "attestations and SHA256SUMS with it (docs/attest.md; default: unsigned)",
    "IMAGEBUILD_VERIFY_KEY": "the public key `invoke verify` checks signatures with (default: the public half "
                             "of IMAGEBUILD_SIGNING_KEY)",
    "IMAGEBUILD_GLANCE_SIGNING_KEY": "an RSA private key file (PEM or DER, unencrypted): publishing to Glance "
                                     "signs the image with it (img_signature*, docs/publish.md; default: unsigned)",
    "IMAGEBUILD_GLANCE_SIGNING_CERT": "the X.509 certificate of that key, as stored in Barbican (PEM or DER)",
    "IMAGEBUILD_GLANCE_SIGNING_CERT_UUID": "that certificate's Barbican secret UUID (img_signature_certificate_uuid)",
}
ACCELS = ("kvm", "tcg")
WORK_TMPFS_CHOICES = ("auto", "off")


class SettingsError(ImageBuildError):
    """An IMAGEBUILD_* variable has a bad value, or looks like a misspelt one."""

    exit_code = 2


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in value.split(":") if p)


def _file(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Settings:
    output: Path
    work: Path
    cache: Path
    accel: str                          # "" (probe), "kvm" or "tcg"
    recipe_path: tuple[Path, ...]
    template_path: tuple[Path, ...]
    mirrors: str
    cache_max: int = 20 * 1024**3       # bytes
    appliance_kernel: str = "pvh"       # appliance_kernel.KERNEL_CHOICES
    work_tmpfs: str = "auto"            # WORK_TMPFS_CHOICES (workspace.scratch_plan)
    signing_key: Path | None = None     # attest.outputs.check_signing_key reads it (before any VM starts)
    verify_key: Path | None = None
    glance_signing_key: Path | None = None    # publish.signing loads the three before anything is hashed
    glance_signing_cert: Path | None = None
    glance_signing_cert_uuid: str = ""

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Settings:
        """Validate every IMAGEBUILD_* variable at once; one error lists all that is wrong."""
        problems = []
        for name in sorted(k for k in env if k.startswith("IMAGEBUILD_") and k not in VARIABLES):
            close = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=0.85)
            if close:  # other IMAGEBUILD_* names may be a recipe's own password variable: only typos fail
                problems.append(f"{name} is not a setting; did you mean {close[0]}?")
        accel = env.get("IMAGEBUILD_ACCEL", "")
        if accel not in ("", *ACCELS):
            problems.append(f"IMAGEBUILD_ACCEL={accel!r}: must be {' or '.join(ACCELS)} (or unset: probe)")
        for name in ("IMAGEBUILD_OUTPUT", "IMAGEBUILD_WORK", "IMAGEBUILD_CACHE", "IMAGEBUILD_SIGNING_KEY",
                     "IMAGEBUILD_VERIFY_KEY", "IMAGEBUILD_GLANCE_SIGNING_KEY", "IMAGEBUILD_GLANCE_SIGNING_CERT"):
            if name in env and not env[name].strip():
                problems.append(f"{name} is set but empty: unset it or name a "
                                + ("file" if name.endswith(("_KEY", "_CERT")) else "directory"))
        glance_signing = [n for n in ("IMAGEBUILD_GLANCE_SIGNING_KEY", "IMAGEBUILD_GLANCE_SIGNING_CERT",
                                      "IMAGEBUILD_GLANCE_SIGNING_CERT_UUID") if env.get(n, "").strip()]
        if 0 < len(glance_signing) < 3:
            problems.append(f"{', '.join(glance_signing)} set without the others: Glance signing needs the key, "
                            "its certificate and the certificate's Barbican UUID")
        appliance_kernel = env.get("IMAGEBUILD_APPLIANCE_KERNEL") or "pvh"
        if appliance_kernel not in ("pvh", "packaged"):
            problems.append(f"IMAGEBUILD_APPLIANCE_KERNEL={appliance_kernel!r}: must be pvh or packaged")
        work_tmpfs = env.get("IMAGEBUILD_WORK_TMPFS") or "auto"
        if work_tmpfs not in WORK_TMPFS_CHOICES:
            problems.append(f"IMAGEBUILD_WORK_TMPFS={work_tmpfs!r}: must be {' or '.join(WORK_TMPFS_CHOICES)}")
        cache_max = 20 * 1024**3
        if env.get("IMAGEBUILD_CACHE_MAX"):
            try:
                cache_max = parse_size(env["IMAGEBUILD_CACHE_MAX"])
            except ValueError as exc:
                problems.append(f"IMAGEBUILD_CACHE_MAX: {exc}")
        if problems:
            raise SettingsError("bad environment: " + "; ".join(problems))
        xdg = env.get("XDG_CACHE_HOME") or "~/.cache"
        return cls(
            output=Path(env.get("IMAGEBUILD_OUTPUT") or PROJECT_ROOT / "output").expanduser(),
            work=Path(env.get("IMAGEBUILD_WORK") or PROJECT_ROOT / "work").expanduser(),
            cache=(Path(env["IMAGEBUILD_CACHE"]) if env.get("IMAGEBUILD_CACHE") else Path(xdg) / "imagebuild"
                   ).expanduser(),
            accel=accel,
            recipe_path=_paths(env.get("IMAGEBUILD_RECIPE_PATH", "")),
            template_path=_paths(env.get("IMAGEBUILD_TEMPLATE_PATH", "")),
            mirrors=env.get("IMAGEBUILD_MIRRORS", ""),
            cache_max=cache_max,
            appliance_kernel=appliance_kernel,
            work_tmpfs=work_tmpfs,
            signing_key=_file(env.get("IMAGEBUILD_SIGNING_KEY")),
            verify_key=_file(env.get("IMAGEBUILD_VERIFY_KEY")),
            glance_signing_key=_file(env.get("IMAGEBUILD_GLANCE_SIGNING_KEY")),
            glance_signing_cert=_file(env.get("IMAGEBUILD_GLANCE_SIGNING_CERT")),
            glance_signing_cert_uuid=env.get("IMAGEBUILD_GLANCE_SIGNING_CERT_UUID", "").strip(),
        )


_configured: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Install the settings every library call uses (tasks.py, once per task); None undoes it."""
    global _configured
    _configured = settings


def current() -> Settings:
    if _configured is not None:
        return _configured
    return Settings.from_environ(os.environ)

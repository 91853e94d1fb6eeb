"""Installer backends behind one small interface.

An installer turns a recipe into a bootable single-partition disk at ``build.disk``. It may finish
its work inside the shared libguestfs session (``finalize``, e.g. installing the bootloader), so a
build launches the appliance once. ``backends.installer_for`` gives a recipe its installer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..events import Reporter
from ..guest import Guest
from ..recipe import Backend, Recipe
from ..workspace import Build


class Installer(Protocol):
    backend: ClassVar[Backend]
    installs_packages: ClassVar[bool]   # the install puts the recipe's whole package set in

    def tools(self, recipe: Recipe) -> dict[str, str]:
        """Host programs needed, each with what it is needed for."""
        ...

    def validate(self, recipe: Recipe, reporter: Reporter, *, for_build: bool) -> None:
        """Everything that can be checked before a download or a VM starts (``for_build``: also what a
        real build needs, such as pinned media and the root password)."""
        ...

    def describe(self, recipe: Recipe) -> dict[str, Any]:
        """What ``install`` would do, for ``invoke show`` (no side effects)."""
        ...

    def disk_ahead(self, build: Build) -> Path | None:
        """The disk's file, already partitioned, before ``install`` fills it, so that the libguestfs
        appliance can boot on it meanwhile; None when the installer makes the disk whole."""
        ...

    def install(self, build: Build) -> None:
        ...

    def finalize(self, guest: Guest, build: Build) -> None:
        ...

    def boot_config(self, guest: Guest, build: Build) -> None:
        """After the generalization steps (which may change the kernel command line): regenerate the
        boot loader's configuration from the image's settings."""
        ...

    def seal(self, build: Build) -> None:
        """After the libguestfs session: write each filesystem of ``build.disk`` once more from its tree,
        so the same inputs give the same bytes (``install/reseal.py``); a no-op where the installer's
        disks are not reproducible (a VM install)."""
        ...

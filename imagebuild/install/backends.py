"""Which installer a recipe gets (``install.backend``). A backend's module is imported only for a recipe
that uses it: the VM installer brings pykickstart and Jinja2 (~0.15 s), which a bootstrap build never
needs."""

from __future__ import annotations

from ..recipe import Backend, Recipe
from . import Installer


def installer_for(recipe: Recipe) -> Installer:
    if recipe.install.backend is Backend.BOOTSTRAP:
        from .bootstrap import BootstrapInstaller
        return BootstrapInstaller()
    from .vm import VMInstaller
    return VMInstaller()

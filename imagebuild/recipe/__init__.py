"""Recipes: TOML files in ``recipes/`` that may ``extends`` another recipe, resolved into a frozen, validated
``Recipe`` that round-trips through JSON. Errors name the file that set the offending key.

- ``schema.py``: what a recipe can say (the dataclasses, the choices, the cell and firmware model)
- ``convert.py``: plain data <-> those dataclasses, every key and type checked
- ``load.py``: finding recipe files, reading TOML, merging the ``extends`` chain with each key's origin
- ``rules.py``: the rules beyond types (ranges, names, the firmware and boot-test matrix agreeing)
"""

from __future__ import annotations

from .convert import from_data, to_data
from .load import PROJECT_ROOT, find_recipe, list_recipes, load_recipe, recipe_dirs
from .rules import validate
from .schema import (
    BASE_PACKAGES,
    CELL_MACHINES,
    CLAIMED_CELLS,
    DATASOURCES,
    NAME_RE,
    NEEDS_LAYOUT,
    Backend,
    BootFirmware,
    Bootstrap,
    BootTest,
    Cell,
    Cloud,
    Customize,
    Family,
    Firmware,
    Glance,
    Image,
    Install,
    Machine,
    Ovirt,
    Packages,
    Publish,
    Recipe,
    Renderer,
    SeedKind,
    VMInstall,
    publish_firmware,
)

__all__ = [
    "BASE_PACKAGES", "CELL_MACHINES", "CLAIMED_CELLS", "DATASOURCES", "NAME_RE", "NEEDS_LAYOUT", "PROJECT_ROOT",
    "Backend", "BootFirmware", "BootTest", "Bootstrap", "Cell", "Cloud", "Customize", "Family", "Firmware",
    "Glance", "Image", "Install", "Machine", "Ovirt", "Packages", "Publish", "Recipe", "Renderer", "SeedKind",
    "VMInstall", "find_recipe", "from_data", "list_recipes", "load_recipe", "publish_firmware", "recipe_dirs",
    "to_data", "validate",
]

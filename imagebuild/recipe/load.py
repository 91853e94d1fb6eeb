"""Finding and loading recipes: TOML files in ``recipes/`` (or ``$IMAGEBUILD_RECIPE_PATH``) that may
``extends`` another recipe. The chain is merged (tables key by key, anything else replaced by the child),
each key remembering the file that set it, then converted (``convert.py``) and checked (``rules.py``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import RecipeError, RecipeErrors, raise_all
from ..settings import current
from .convert import from_data
from .rules import validate
from .schema import NAME_RE, Recipe

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
# Keys the loader sets itself: in a recipe file they could never take effect.
LOADER_KEYS = {
    "name": "a recipe's name is the name of its file",
    "sources": "the loader lists the files merged into a recipe",
}


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up: $IMAGEBUILD_RECIPE_PATH (colon-separated), then recipes/."""
    return list(current().recipe_path) + [PROJECT_ROOT / "recipes"]


def find_recipe(name: str, dirs: list[Path] | None = None) -> Path:
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise RecipeError("no such recipe file", file=path)
        return path
    if not NAME_RE.match(name):
        raise RecipeError(f"'{name}' is not a valid recipe name (lower-case letters, digits, . _ -)")
    for d in dirs or recipe_dirs():
        path = d / f"{name}.toml"
        if path.is_file():
            return path
    known = ", ".join(list_recipes(dirs)) or "none"
    raise RecipeError(f"no recipe named '{name}' (known recipes: {known})")


def list_recipes(dirs: list[Path] | None = None, *, include_abstract: bool = True) -> list[str]:
    names: dict[str, None] = {}
    for d in dirs or recipe_dirs():
        for p in sorted(d.glob("*.toml")):
            names.setdefault(p.stem, None)
    if include_abstract:
        return list(names)
    return [n for n in names if not load_recipe(n, dirs).abstract]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw[:exc.start].count(b"\n") + 1
        raise RecipeError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} (line {line}); "
                          "TOML files are UTF-8", file=path, line=line) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise RecipeError(f"not valid TOML: {exc}", file=path,
                          line=int(m.group(1)) if m else None) from None
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror}", file=path) from None


def _merge(base: dict[str, Any], child: dict[str, Any], origins: dict[str, str], file: str,
           prefix: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        dotted = prefix + key
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origins, file, dotted + ".")
        else:
            out[key] = value
            _mark(value, dotted, origins, file)
    return out


def _mark(value: Any, dotted: str, origins: dict[str, str], file: str) -> None:
    origins[dotted] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, f"{dotted}.{k}", origins, file)


def _display(path: Path) -> str:
    """A recipe file as the manifest shows it: relative to the project when it lives there."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path.resolve())


def load_recipe(name: str, dirs: list[Path] | None = None) -> Recipe:
    """Resolve ``name`` (a recipe name or a path to a .toml file) into a validated Recipe."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[str] = []
    path = find_recipe(name, dirs)
    while True:
        key = str(path.resolve())
        if key in seen:
            cycle = " -> ".join(Path(s).stem for s in seen + [key])
            raise RecipeError(f"'extends' makes a cycle: {cycle}", file=path, key="extends")
        seen.append(key)
        data = _read_toml(path)
        chain.append((path, data))
        parent = data.get("extends", "")
        if not parent:
            break
        if not isinstance(parent, str):
            raise RecipeError("expected a string (the name of a recipe)", file=path, key="extends")
        try:
            path = find_recipe(parent, [path.parent] + (dirs or recipe_dirs()))
        except RecipeError as exc:
            raise RecipeError(f"parent recipe not found: {exc}", file=path, key="extends") from None

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for path, data in reversed(chain):
        data = dict(data)
        data.pop("abstract", None) if path != chain[0][0] else None  # abstract is never inherited
        merged = _merge(merged, data, origins, str(path))
    leaf = chain[0][0]
    # reported with the unknown keys and wrong types: one run shows every mistake
    problems = [RecipeError(f"cannot be set in a recipe: {why}", file=str(path), key=key)
                for path, data in reversed(chain) for key, why in LOADER_KEYS.items() if key in data]
    merged["name"] = leaf.stem
    merged["sources"] = [_display(p) for p, _ in chain]
    merged.setdefault("description", "")
    try:
        recipe: Recipe = from_data(Recipe, merged, origins=origins, default_file=str(leaf))
    except RecipeError as exc:
        problems += exc.errors if isinstance(exc, RecipeErrors) else (exc,)
    raise_all(problems)  # raises whenever from_data did
    validate(recipe, origins, str(leaf))
    return recipe

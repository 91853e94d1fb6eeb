"""Plain data <-> the recipe's dataclasses, generically: ``to_data`` for JSON (the manifest, ``invoke
show``), ``from_data`` for what TOML or JSON gave. Conversion checks every key and type and collects every
mistake of the tree, each naming the file that set the key (``origins``: dotted key -> file)."""

from __future__ import annotations

import dataclasses
import re
import typing
from enum import StrEnum
from typing import Any

from ..errors import RecipeError, raise_all


def to_data(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, StrEnum):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table of strings"
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str, origins: dict[str, str], default_file: str,
             errors: list[RecipeError] | None = None) -> Any:
    def fail(msg: str) -> RecipeError:
        return RecipeError(msg, file=origin_of(origins, key, default_file), key=key)

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a table, got {type(value).__name__}")
        return from_data(tp, value, origins=origins, default_file=default_file, prefix=key + ".", errors=errors)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail(f"expected {_type_name(tp)}, got {type(value).__name__}")
        item_tp = typing.get_args(tp)[0]
        return tuple(_convert(item_tp, v, f"{key}[{i}]", origins, default_file, errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str | int | bool) for v in value.values()):
            raise fail("expected a table of strings")
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        try:
            return tp(value)
        except ValueError:
            raise fail(f"expected {_type_name(tp)}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    raise fail(f"unsupported type {tp}")  # pragma: no cover - a schema bug


def origin_of(origins: dict[str, str], key: str, default_file: str) -> str:
    """The file that set ``key`` (``boot_test.matrix[1]``) or the nearest table above it, else ``default_file``."""
    probe = re.sub(r"\[\d+\]", "", key)
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return default_file


class _Incomplete(Exception):
    """A table had errors (already collected): its parent cannot be built either."""


def from_data(cls: Any, data: dict[str, Any], *, origins: dict[str, str], default_file: str,
              prefix: str = "", errors: list[RecipeError] | None = None) -> Any:
    """Build ``cls`` from plain data. Every unknown key, wrong type and missing key of the whole tree
    is collected, then raised together (``RecipeErrors``), so one run shows every mistake."""
    top = errors is None
    found: list[RecipeError] = [] if errors is None else errors
    before = len(found)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            found.append(RecipeError(f"unknown key (known keys here: {known})",
                                     file=origin_of(origins, prefix + key, default_file), key=prefix + key))
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], prefix + name, origins, default_file, found)
            except RecipeError as exc:
                found.append(exc)
            except _Incomplete:
                pass
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            found.append(RecipeError("required key is missing", file=default_file, key=prefix + name))
    if len(found) > before:
        if top:
            raise_all(found)
        raise _Incomplete
    return cls(**kwargs)

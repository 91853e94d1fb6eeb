"""Rendering: a recipe's Jinja2 template → the answer file's text, each line traced to its template line.

``render_answer_file`` renders the recipe's template (``install.vm.template``, found under ``kickstart/``)
with ``StrictUndefined`` in a sandbox. Rendering is deterministic: the same recipe, password hash and
mirror map give the same bytes. Every rendered line remembers the template line it came from, so an
error names both: ``ks.cfg:23 (from kickstart/el7-base.ks.j2:41)``.
"""

from __future__ import annotations

import hashlib
import os
import re
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import RecipeError
from ..mirrors import resolve_mirrors, rewrite_url
from ..recipe import PROJECT_ROOT, Backend, Cloud, Family, Recipe
from ..settings import current  # the environment is read once, at the edge
from .findings import ANSWER_FILE_NAME, AnswerFileKind

TEMPLATE_DIR = PROJECT_ROOT / "kickstart"
# The last %post (or late_command) prints this to the serial console; the install watchdog requires it,
# because a guest that merely powered off has not succeeded. The templates print it in two pieces so
# that the answer file's own text (which installers may echo into their logs) never contains it whole.
COMPLETION_MARKER = "IMAGEBUILD-INSTALL-COMPLETE"
SERIAL_CONSOLE = "ttyS0,115200n8"
# Syntactically a SHA-512 crypt hash, but no password hashes to it: used where no password is needed
# (``invoke validate``, ``invoke show``, tests). A build always renders with the real hash.
PLACEHOLDER_HASH = "$6$imagebuildcheck$" + "0" * 86


@dataclass(frozen=True)
class Origin:
    """The template line a rendered line came from."""
    template: str
    line: int

    def __str__(self) -> str:
        return f"{self.template}:{self.line}"



@dataclass(frozen=True)
class RenderedAnswerFile:
    """A rendered answer file and where each of its lines came from."""
    kind: AnswerFileKind
    name: str                          # file name inside the installer's initrd: ks.cfg / preseed.cfg
    template: str                      # the recipe's leaf template, e.g. centos7.ks.j2
    syntax: str                        # pykickstart version name (RHEL7) or "preseed"
    text: str = field(repr=False)
    origins: tuple[Origin | None, ...] = field(repr=False, default=())
    secrets: tuple[str, ...] = field(repr=False, default=())  # values redacted() hides

    def origin(self, line: int | None) -> Origin | None:
        if line is None or not 1 <= line <= len(self.origins):
            return None
        return self.origins[line - 1]

    def where(self, line: int | None) -> str:
        if line is None:
            return self.name
        origin = self.origin(line)
        return f"{self.name}:{line}" + (f" (from {origin})" if origin else "")

    def redacted(self) -> str:
        """The text with the password hash masked: what logs, manifests and ``invoke show`` may print."""
        text = self.text
        for s in self.secrets:
            if s:
                text = text.replace(s, "<redacted>")
        return text

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def write(self, directory: Path) -> Path:
        """Write the file (mode 0600: it holds the password hash) into ``directory``; return its path."""
        path = Path(directory) / self.name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.text)
        return path



# -- rendering -------------------------------------------------------------------------------------

_MARK_RE = re.compile("\x1e(\\d+)\\.(\\d+)\x1f")


class _LineTracer(Extension):
    """Tags every newline of template text with the template and line it comes from.

    Jinja2 keeps no map from output lines to template lines, so we make one: each newline in a
    template's literal text gets an invisible marker (``\\x1e<template>.<line>\\x1f``) just before it;
    after rendering the markers are read and removed. Lines made by an expression that contains
    newlines take the origin of the next marked line (the expression's own line).
    """

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        environment.extend(traced_templates=[])

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        names: list[str] = self.environment.traced_templates  # type: ignore[attr-defined]
        name = _display_path(stream.filename or stream.name or "<template>")
        if name not in names:
            names.append(name)
        idx = names.index(name)
        for tok in stream:
            if tok.type == "data" and ("\x1e" in tok.value or "\x1f" in tok.value):
                # They would forge line markers; no answer file needs them.
                raise jinja2.TemplateSyntaxError("control characters \\x1e and \\x1f are not allowed in "
                                                 "templates", tok.lineno, stream.name, stream.filename)
            if tok.type == "data" and "\n" in tok.value:
                parts = tok.value.split("\n")
                value = "".join(f"{part}\x1e{idx}.{tok.lineno + i}\x1f\n"
                                for i, part in enumerate(parts[:-1]))
                yield Token(tok.lineno, "data", value + parts[-1])
            else:
                yield tok


def _display_path(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(PROJECT_ROOT))
    except (ValueError, OSError):
        return filename


def template_dirs() -> list[Path]:
    """Where templates are looked up: $IMAGEBUILD_TEMPLATE_PATH (colon-separated), then kickstart/."""
    return list(current().template_path) + [TEMPLATE_DIR]


def _url_host(url: str) -> str:
    return urlsplit(str(url)).netloc


def _url_path(url: str) -> str:
    return urlsplit(str(url)).path.rstrip("/") or "/"


def _environment(dirs: Sequence[Path]) -> jinja2.Environment:
    # Sandboxed: a template can read its variables but not reach into Python objects.
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
        lstrip_blocks=True, autoescape=False, extensions=[_LineTracer])
    env.filters["urlhost"] = _url_host
    env.filters["urlpath"] = _url_path
    return env


def answer_file_kind(recipe: Recipe) -> AnswerFileKind:
    """The template's suffix names the installer (recipe validation allows only these two)."""
    template = recipe.install.vm.template
    if template.endswith(".ks.j2"):
        return AnswerFileKind.KICKSTART
    if template.endswith(".preseed.j2"):
        return AnswerFileKind.PRESEED
    return AnswerFileKind.KICKSTART if recipe.image.family is Family.EL else AnswerFileKind.PRESEED


def kickstart_syntax(recipe: Recipe) -> str:
    """The pykickstart syntax version for an EL recipe: RHEL<major> (RHEL7 for CentOS 7)."""
    from pykickstart.version import versionMap

    major = recipe.image.os_version.split(".")[0]
    name = recipe.install.vm.kickstart_syntax or f"RHEL{major}"
    if name not in versionMap:
        raise RecipeError(f"pykickstart has no kickstart syntax '{name}' for os_version "
                          f"'{recipe.image.os_version}'", file=_leaf(recipe), key="image.os_version")
    return name


def _leaf(recipe: Recipe) -> str | None:
    return recipe.sources[0] if recipe.sources else None



_BAD_CHAR_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")
_BUILTINS = ("recipe_name", "os_version", "disk_gib", "tree_url", "install_from_cdrom", "packages",
             "root_password_hash", "completion_marker", "serial_console", "cloud")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def template_variables(recipe: Recipe, *, root_password_hash: str,
                       mirrors: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a template sees: the built-ins below plus the recipe's ``[install.vm.variables]``."""
    vm = recipe.install.vm
    mirrors = resolve_mirrors(mirrors)
    values: dict[str, Any] = {
        "recipe_name": recipe.name,
        "os_version": recipe.image.os_version,
        "disk_gib": recipe.image.disk_gib,
        "tree_url": rewrite_url(vm.tree_url, mirrors),
        "install_from_cdrom": bool(vm.iso_url),  # the installer's own ISO is attached as the CD-ROM
        "packages": list(recipe.all_packages),
        "root_password_hash": root_password_hash,
        "completion_marker": COMPLETION_MARKER,
        "serial_console": SERIAL_CONSOLE,
        "cloud": _cloud_variables(recipe.cloud),
    }
    if _CONTROL_RE.search(values["tree_url"]):
        raise RecipeError("the tree URL contains control characters", file=_leaf(recipe),
                          key="install.vm.tree_url")
    for name, value in vm.variables.items():
        key = f"install.vm.variables.{name}"
        if name in _BUILTINS:
            raise RecipeError(f"'{name}' is set by imagebuild and cannot be overridden", file=_leaf(recipe),
                              key=key)
        if _CONTROL_RE.search(value):
            # A newline would let a variable add whole answer-file lines behind the template's back.
            raise RecipeError("answer-file variables are single-line text without control characters",
                              file=_leaf(recipe), key=key)
        values[name] = rewrite_url(value, mirrors) if re.match(r"^(https?|ftp)://", value) else value
    return values


def _cloud_variables(cloud: Cloud) -> dict[str, Any]:
    """The recipe's ``[cloud]`` as plain data. The settings are given as the recipe has them, also when
    ``enabled`` is false: a template tests ``cloud.enabled`` (the packages are in ``packages`` then)."""
    return {
        "enabled": cloud.enabled,
        "packages": list(cloud.packages),
        "default_user": cloud.default_user,
        "datasources": list(cloud.datasources),
        "renderer": cloud.renderer.value,
        "growfs": cloud.growfs,
    }


def render_answer_file(recipe: Recipe, *, root_password_hash: str = PLACEHOLDER_HASH,
                       mirrors: Mapping[str, str] | None = None,
                       dirs: Sequence[Path] | None = None) -> RenderedAnswerFile:
    """Render the recipe's template. Raises ``RecipeError`` naming the template file and line."""
    if recipe.install.backend is not Backend.VM:
        raise RecipeError("only VM-install recipes have an answer file", file=_leaf(recipe),
                          key="install.backend")
    kind = answer_file_kind(recipe)
    syntax = kickstart_syntax(recipe) if kind is AnswerFileKind.KICKSTART else "preseed"
    variables = template_variables(recipe, root_password_hash=root_password_hash, mirrors=mirrors)
    search = list(dirs) if dirs is not None else template_dirs()
    env = _environment(search)
    name = recipe.install.vm.template
    try:
        raw = env.get_template(name).render(variables)
    except jinja2.TemplateNotFound as exc:
        looked = ", ".join(_display_path(str(d)) for d in search)
        raise RecipeError(f"template '{exc.name}' not found (looked in {looked})",
                          file=_leaf(recipe), key="install.vm.template") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"template syntax error: {exc.message}",
                          file=_display_path(exc.filename or exc.name or name), line=exc.lineno) from None
    except Exception as exc:  # noqa: BLE001 - anything a template does wrong is the recipe's error
        file, line = _template_frame(exc, env)
        what = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        if isinstance(exc, jinja2.UndefinedError):
            what += " (give it in the recipe's [install.vm.variables])"
        raise RecipeError(f"rendering failed: {type(exc).__name__}: {what}",
                          file=file or name, line=line) from None
    text, origins = _untrace(raw, env.traced_templates)  # type: ignore[attr-defined]
    for i, rendered_line in enumerate(text.split("\n"), 1):
        if m := _BAD_CHAR_RE.search(rendered_line):
            # Installers split lines at \n only, while Python (and pykickstart) also split at these:
            # line numbers would disagree, and no answer file needs them.
            origin = origins[i - 1] if i <= len(origins) else None
            raise RecipeError(f"rendered line {i} contains the control character U+{ord(m.group()):04X}; "
                              "answer files are plain text", file=origin.template if origin else name,
                              line=origin.line if origin else None)
    return RenderedAnswerFile(kind=kind, name=ANSWER_FILE_NAME[kind], template=name, syntax=syntax,
                              text=text, origins=origins,
                              secrets=(root_password_hash,) if root_password_hash else ())


def _template_frame(exc: BaseException, env: jinja2.Environment) -> tuple[str | None, int | None]:
    """The innermost template frame of a rendering error (Jinja2 rewrites tracebacks to show them)."""
    found: tuple[str | None, int | None] = (None, None)
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.endswith(".j2") or _display_path(filename) in env.traced_templates:  # type: ignore[attr-defined]
            found = (_display_path(filename), lineno)
    return found


def _untrace(raw: str, names: Sequence[str]) -> tuple[str, tuple[Origin | None, ...]]:
    lines = raw.split("\n")
    clean: list[str] = []
    origins: list[Origin | None] = []
    for line in lines:
        marks = _MARK_RE.findall(line)
        clean.append(_MARK_RE.sub("", line))
        origins.append(Origin(names[int(marks[-1][0])], int(marks[-1][1])) if marks else None)
    # A line without a marker came out of an expression: it belongs to the next marked line's source.
    following: Origin | None = None
    for i in range(len(origins) - 1, -1, -1):
        if origins[i] is None:
            origins[i] = following
        else:
            following = origins[i]
    text = "\n".join(clean)
    count = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    return text, tuple(origins[:count])


"""Answer files: a recipe's Jinja2 template → a rendered kickstart or preseed → parsed → golden-policy lint.

The pieces, in the order a build uses them:

- ``render_answer_file`` renders the recipe's template (``install.vm.template``, found under
  ``kickstart/``) with ``StrictUndefined``. Rendering is deterministic: the same recipe, password hash
  and mirror map give the same bytes. Every rendered line remembers the template line it came from, so
  an error names both: ``ks.cfg:23 (from kickstart/el7-base.ks.j2:41)``.
- ``check_answer_file`` parses a kickstart with pykickstart for the target's syntax version (RHEL7 for
  EL 7) or a preseed with our own debconf-format parser, then lints it against the golden-image policy
  (one ``/`` that grows, no swap/LVM/autopart, poweroff at the end, crypted passwords only, ...). Each
  violation is its own ``Problem``; all of them are raised together as one ``AnswerFileError``.
- ``validate_recipe`` is what ``invoke validate`` and the start of a build call; ``prepare_answer_file``
  is what the install stage calls to get the real file (password read and hashed).

The root password is read from a file or an environment variable, hashed with ``openssl passwd -6``
(given on stdin, never on argv) and only the crypted hash is written into the answer file.
Nothing in this module starts a VM or touches the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import traceback
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import RecipeError
from .events import NULL_REPORTER, Reporter
from .recipe import PROJECT_ROOT, Backend, Family, Recipe, VMInstall
from .run import require_tools, run

TEMPLATE_DIR = PROJECT_ROOT / "kickstart"
# The last %post (or late_command) prints this to the serial console; the install watchdog requires it,
# because a guest that merely powered off has not succeeded. The templates print it in two pieces so
# that the answer file's own text (which installers may echo into their logs) never contains it whole.
COMPLETION_MARKER = "IMAGEBUILD-INSTALL-COMPLETE"
SERIAL_CONSOLE = "ttyS0,115200n8"
# Syntactically a SHA-512 crypt hash, but no password hashes to it: used where no password is needed
# (``invoke validate``, ``invoke show``, tests). A build always renders with the real hash.
PLACEHOLDER_HASH = "$6$imagebuildcheck$" + "0" * 86
CRYPT_HASH_RE = re.compile(r"^\$(5|6)\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43,86}$")
_MAX_PASSWORD_BYTES = 1024


class AnswerFileKind(StrEnum):
    KICKSTART = "kickstart"  # anaconda (EL)
    PRESEED = "preseed"      # debian-installer


ANSWER_FILE_NAME = {AnswerFileKind.KICKSTART: "ks.cfg", AnswerFileKind.PRESEED: "preseed.cfg"}


@dataclass(frozen=True)
class Origin:
    """The template line a rendered line came from."""
    template: str
    line: int

    def __str__(self) -> str:
        return f"{self.template}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """One finding: ``rule`` is a stable kebab-case id, ``line`` a line of the rendered file."""
    rule: str
    message: str
    line: int | None = None


@dataclass(frozen=True)
class Findings:
    errors: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()


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


class AnswerFileError(RecipeError):
    """The answer file does not parse or breaks the golden-image policy; ``problems`` lists each."""

    def __init__(self, problems: Sequence[Problem], *, name: str,
                 rendered: RenderedAnswerFile | None = None) -> None:
        self.problems = tuple(problems)
        self.rendered_name = name

        def where(line: int | None) -> str:
            if rendered is not None:
                return rendered.where(line)
            return name if line is None else f"{name}:{line}"

        lines = [f"{where(p.line)}: {p.message}" for p in self.problems]
        if rendered is not None:
            head = f"answer file {rendered.name} (rendered from {rendered.template})"
        else:
            head = f"answer file {name}"
        count = len(lines)
        message = (f"{head} has {count} problem{'s' if count != 1 else ''}:\n  " + "\n  ".join(lines))
        first = self.problems[0] if self.problems else None
        origin = rendered.origin(first.line) if rendered is not None and first else None
        # file/line point at the template when we know it (that is what the author edits).
        self.file = origin.template if origin else name
        self.key = None
        self.line = origin.line if origin else (first.line if first else None)
        Exception.__init__(self, message)


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
    extra = [Path(p) for p in os.environ.get("IMAGEBUILD_TEMPLATE_PATH", "").split(":") if p]
    return extra + [TEMPLATE_DIR]


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


def site_mirrors(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The site's mirror map from ``IMAGEBUILD_MIRRORS``: ``FROM=TO`` URL prefix pairs, space-separated.

    e.g. ``IMAGEBUILD_MIRRORS="http://vault.centos.org/=http://mirror.example/centos-vault/"``. Applied
    to the install tree and to URL variables of the answer file; the media pins still apply, so a mirror
    can serve the media but not change it.
    """
    env = os.environ if environ is None else environ
    mirrors: dict[str, str] = {}
    for pair in env.get("IMAGEBUILD_MIRRORS", "").split():
        src, sep, dst = pair.partition("=")
        if not sep or not re.match(r"^(https?|ftp|file)://", src) or not re.match(r"^(https?|file)://", dst):
            raise RecipeError(f"IMAGEBUILD_MIRRORS: '{pair}' is not FROM_URL=TO_URL",
                              key="IMAGEBUILD_MIRRORS")
        mirrors[src] = dst
    return mirrors


def resolve_mirrors(mirrors: Mapping[str, str] | None) -> Mapping[str, str]:
    """``None`` means the site's map (``IMAGEBUILD_MIRRORS``); pass ``{}`` for none."""
    return site_mirrors() if mirrors is None else mirrors


def rewrite_url(url: str, mirrors: Mapping[str, str] | None) -> str:
    """Apply a mirror map (longest matching prefix wins); ``None`` means the site's map."""
    mirrors = resolve_mirrors(mirrors)
    for prefix in sorted(mirrors, key=len, reverse=True):
        if url.startswith(prefix):
            return mirrors[prefix] + url[len(prefix):]
    return url


_BAD_CHAR_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")
_BUILTINS = ("recipe_name", "os_version", "disk_gib", "tree_url", "install_from_cdrom", "packages",
             "root_password_hash", "completion_marker", "serial_console")
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
        "packages": list(recipe.packages.all),
        "root_password_hash": root_password_hash,
        "completion_marker": COMPLETION_MARKER,
        "serial_console": SERIAL_CONSOLE,
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


# -- kickstart -------------------------------------------------------------------------------------

def parse_kickstart(text: str, syntax: str = "RHEL7") -> tuple[Any, Findings]:
    """Parse with pykickstart; return (handler or None, findings). Syntax errors name their line."""
    from pykickstart.errors import KickstartDeprecationWarning, KickstartError, KickstartParseWarning
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    class TracingParser(KickstartParser):
        """Remembers the line being handled, so warnings (which carry none) can name it."""
        current = 0

        def handleCommand(self, lineno: int, args: list[str]) -> Any:  # noqa: N802 - pykickstart API
            self.current = lineno
            return super().handleCommand(lineno, args)

    handler = makeVersion(syntax)
    parser = TracingParser(handler, followIncludes=False, missingIncludeIsFatal=False)
    errors: list[Problem] = []
    warned: list[Problem] = []
    caught: list[tuple[Warning | str, type[Warning], int]] = []

    def record(message: Warning | str, category: type[Warning], *_args: Any, **_kw: Any) -> None:
        caught.append((message, category, parser.current))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        try:
            parser.readKickstartFromString(text)
        except KickstartError as exc:
            errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): "
                                  + (str(exc.message).strip() or "cannot parse this line"),
                                  exc.lineno or None))
        except ValueError as exc:  # shlex: unbalanced quotes, raised by pykickstart without a line
            errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): {exc}",
                                  _first_unsplittable_line(text)))
        except Exception as exc:  # noqa: BLE001 - a pykickstart bug on odd input is still a rejection
            errors.append(Problem("syntax", f"kickstart syntax error ({syntax}): pykickstart failed: "
                                  f"{type(exc).__name__}: {exc}", parser.current or None))
    for message, category, line in caught:
        if issubclass(category, KickstartDeprecationWarning):
            warned.append(Problem("deprecated", str(message), line or None))
        elif issubclass(category, KickstartParseWarning):
            errors.append(Problem("parse-warning", str(message), line or None))
    parsed = None if errors and errors[0].rule == "syntax" else handler
    return parsed, Findings(tuple(errors), tuple(warned))


def _first_unsplittable_line(text: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        try:
            shlex.split(line, comments=True)
        except ValueError:
            return i
    return None


def _line_of(text: str, pattern: str) -> int | None:
    rx = re.compile(pattern)
    for i, line in enumerate(text.splitlines(), 1):
        if rx.search(line):
            return i
    return None


# Every rule the lint applies, with what it guards (docs/answer-files.md has the messages).
KICKSTART_RULES = {
    "syntax": "pykickstart parses the file for the target's syntax version (RHEL7 for EL 7)",
    "parse-warning": "pykickstart's warnings (a duplicate definition) are errors",
    "include": "no %include / %ksappend: the file is self-contained",
    "no-root": "there is a 'part /'",
    "mount-point": "'/' is the only mount point, defined once",
    "extra-partition": "no biosboot, /boot/efi or other platform partition",
    "swap": "no swap",
    "lvm": "no LVM (part pv.*, volgroup, logvol)",
    "raid": "no RAID",
    "btrfs": "no btrfs volumes",
    "autopart": "no autopart",
    "reqpart": "no reqpart",
    "grow": "'part /' grows to the end of the disk",
    "zerombr": "zerombr, so a blank disk is used without asking",
    "clearpart": "clearpart --all --initlabel",
    "no-poweroff": "the install ends with poweroff/shutdown (not reboot or halt)",
    "rootpw": "a root password is given",
    "plaintext-rootpw": "the root password is a crypted hash (rootpw --iscrypted)",
    "rootpw-hash": "the crypted root password is a SHA-256/SHA-512 crypt hash",
    "plaintext-password": "user passwords are crypted hashes",
    "erroronfail": "%pre, %pre-install and %post use --erroronfail",
    "display": "cmdline or text: no display needed",
    "network": "DHCP only",
    "bootloader": "a bootloader is installed (not --location=none)",
    "serial-console": "the installed kernel gets console=ttyS0",
    "ignoremissing": "no %packages --ignoremissing",
    "packages": "the recipe's packages are in %packages and not excluded",
}
PRESEED_RULES = {
    "syntax": "every line is 'owner question type value' with a known type",
    "partman-method": "partman-auto/method is 'regular'",
    "partman-recipe": "an expert_recipe is given (the stock ones add swap)",
    "lvm": "no LVM or crypto",
    "raid": "no RAID",
    "swap": "no swap in the recipe",
    "mount-point": "'/' is the only mount point, defined once",
    "extra-partition": "no partition without a mount point",
    "no-root": "the recipe has '/'",
    "grow": "'/' grows to the end of the disk (max -1)",
    "no-swap-question": "partman-basicfilesystems/no_swap is false, so the installer does not ask",
    "no-poweroff": "poweroff at the end, without a final prompt",
    "rootpw": "a root password is given",
    "plaintext-rootpw": "the root password is crypted (passwd/root-password-crypted)",
    "rootpw-hash": "the crypted root password is a SHA-256/SHA-512 crypt hash",
    "plaintext-password": "user passwords are crypted",
    "network": "DHCP only",
    "serial-console": "the installed kernel gets console=ttyS0",
    "bootloader": "grub-installer/bootdev is preseeded",
    "packages": "the recipe's packages are in pkgsel/include",
}


def lint_kickstart(text: str, *, syntax: str = "RHEL7", required_packages: Iterable[str] = ()) -> Findings:
    """Parse and check a kickstart against the golden-image policy (docs/answer-files.md lists the rules)."""
    from pykickstart.constants import (
        CLEARPART_TYPE_ALL,
        DISPLAY_MODE_GRAPHICAL,
        KS_MISSING_IGNORE,
        KS_REBOOT,
        KS_SCRIPT_ONERROR,
        KS_SCRIPT_POST,
        KS_SCRIPT_PRE,
        KS_SCRIPT_PREINSTALL,
        KS_SCRIPT_TRACEBACK,
        KS_SHUTDOWN,
    )

    errors: list[Problem] = []
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*%(include|ksappend)\b", line):
            errors.append(Problem("include", "%include and %ksappend are not allowed: the answer file must "
                                  "be self-contained (it is all the installer gets)", i))
    h, parsed = parse_kickstart(text, syntax)
    errors.extend(parsed.errors)
    if h is None:
        return Findings(tuple(errors), parsed.warnings)

    def err(rule: str, message: str, line: int | None) -> None:
        errors.append(Problem(rule, message, line or None))

    # Storage: exactly one partition, '/', that grows to the disk.
    roots = []
    for pd in h.partition.partitions:
        mp = pd.mountpoint
        if mp == "swap" or (pd.fstype or "") == "swap":
            err("swap", "swap is not allowed: golden images have no swap partition", pd.lineno)
        elif mp.startswith("pv."):
            err("lvm", f"LVM is not allowed: 'part {mp}' makes an LVM physical volume; use one 'part /'",
                pd.lineno)
        elif mp.startswith("raid."):
            err("raid", f"RAID is not allowed: 'part {mp}' makes a RAID member", pd.lineno)
        elif mp.startswith("btrfs."):
            err("btrfs", f"btrfs volumes are not allowed: 'part {mp}'", pd.lineno)
        elif mp == "/":
            roots.append(pd)
        elif mp in ("biosboot", "/boot/efi", "prepboot", "appleboot"):
            err("extra-partition", f"'part {mp}' adds a platform partition: golden images are MBR disks "
                "with exactly one partition, '/'", pd.lineno)
        else:
            err("mount-point", f"'part {mp}' adds a second mount point: golden images have exactly one "
                "partition, '/'", pd.lineno)
    for lv in h.logvol.lvList:
        err("lvm", f"LVM is not allowed: 'logvol {lv.mountpoint}' (use one 'part /')", lv.lineno)
    for vg in h.volgroup.vgList:
        err("lvm", f"LVM is not allowed: 'volgroup {vg.vgname}'", vg.lineno)
    for rd in h.raid.raidList:
        err("raid", f"RAID is not allowed: 'raid {rd.mountpoint}'", rd.lineno)
    for bt in h.btrfs.btrfsList:
        err("btrfs", f"btrfs volumes are not allowed: 'btrfs {bt.mountpoint}'", bt.lineno)
    if h.autopart.autopart:
        err("autopart", "autopart is not allowed: it adds /boot, swap and LVM; use one 'part / --grow'",
            h.autopart.lineno)
    if getattr(h, "reqpart", None) is not None and h.reqpart.reqpart:
        err("reqpart", "reqpart is not allowed: it adds platform partitions (biosboot, /boot/efi) next to /",
            h.reqpart.lineno)
    if not roots and not h.autopart.autopart:
        err("no-root", "no partition for '/': add 'part / --grow' (the only partition of a golden image)",
            None)
    for extra in roots[1:]:
        err("mount-point", "'/' is defined more than once: golden images have exactly one partition, '/'",
            extra.lineno)
    if roots and not roots[0].grow:
        err("grow", "'part /' must use --grow so that / fills the disk", roots[0].lineno)
    if not h.zerombr.zerombr:
        err("zerombr", "zerombr is missing: without it the installer stops to ask before using a blank disk",
            None)
    if not (h.clearpart.type == CLEARPART_TYPE_ALL and h.clearpart.initAll):
        err("clearpart", "'clearpart --all --initlabel' is required: the disk must start empty",
            h.clearpart.lineno if h.clearpart.seen else None)

    # The end of the install: the guest must power itself off.
    if not h.reboot.seen:
        err("no-poweroff", "no 'poweroff' (or 'shutdown'): the install must end by powering the guest off",
            None)
    elif h.reboot.action == KS_REBOOT:
        err("no-poweroff", "'reboot' is not allowed: the install must end with 'poweroff' (a reboot would "
            "boot the new system before it is generalized)", h.reboot.lineno)
    elif h.reboot.action != KS_SHUTDOWN:
        err("no-poweroff", "'halt' is not allowed: it waits forever instead of powering off; use "
            "'poweroff'", h.reboot.lineno)

    # Passwords: crypted hashes only.
    if not h.rootpw.seen:
        err("rootpw", "no rootpw: give the root password as 'rootpw --iscrypted <hash>'", None)
    elif h.rootpw.password and not h.rootpw.isCrypted:
        err("plaintext-rootpw", "rootpw must be a crypted hash ('rootpw --iscrypted'): a plaintext "
            "password would be kept in the installer's kickstart copies and logs", h.rootpw.lineno)
    elif h.rootpw.password and not CRYPT_HASH_RE.match(h.rootpw.password):
        err("rootpw-hash", "the rootpw --iscrypted value is not a SHA-256/SHA-512 crypt hash "
            "($5$... or $6$...)", h.rootpw.lineno)
    for ud in h.user.userList:
        if ud.password and not ud.isCrypted:
            err("plaintext-password",
                f"user '{ud.name}' has a plaintext password: use --iscrypted with a hash", ud.lineno)

    # Scripts must fail the install when they fail.
    names = {KS_SCRIPT_PRE: "%pre", KS_SCRIPT_POST: "%post", KS_SCRIPT_PREINSTALL: "%pre-install"}
    for script in h.scripts:
        if script.type in (KS_SCRIPT_TRACEBACK, KS_SCRIPT_ONERROR):
            continue
        if not script.errorOnFail:
            err("erroronfail", f"{names.get(script.type, '%script')} without --erroronfail: a failing script "
                "would be ignored and a broken image built", script.lineno)

    # Unattended, text-only, DHCP, serial console.
    if h.displaymode.displayMode is None or h.displaymode.displayMode == DISPLAY_MODE_GRAPHICAL:
        err("display", "the install must not need a display: add 'cmdline' (or 'text')",
            h.displaymode.lineno if h.displaymode.displayMode is not None else None)
    for nd in h.network.network:
        if nd.bootProto and nd.bootProto != "dhcp":
            err("network", f"network --bootproto={nd.bootProto}: golden images get their address by DHCP",
                nd.lineno)
    if h.bootloader.seen and h.bootloader.location == "none":
        err("bootloader", "bootloader --location=none: the image would not boot; use --location=mbr",
            h.bootloader.lineno)
    if not h.bootloader.seen or not re.search(r"(^|\s)console=ttyS0", h.bootloader.appendLine or ""):
        err("serial-console", "the bootloader must put a serial console on the kernel command line: "
            f"bootloader --append=\"console=tty0 console={SERIAL_CONSOLE}\"",
            h.bootloader.lineno if h.bootloader.seen else None)

    # Packages: what the recipe asks for must be installed, and a missing one must fail the install.
    packages_line = _line_of(text, r"^\s*%packages\b")
    if h.packages.handleMissing == KS_MISSING_IGNORE:
        err("ignoremissing", "%packages --ignoremissing would hide a missing package", packages_line)
    wanted = set(h.packages.packageList)
    for pkg in required_packages:
        if pkg in h.packages.excludedList:
            err("packages", f"package '{pkg}' from the recipe is excluded ('-{pkg}') in %packages",
                packages_line)
        elif pkg not in wanted:
            err("packages", f"package '{pkg}' from the recipe is missing from %packages", packages_line)

    errors.sort(key=lambda p: (p.line is None, p.line or 0))
    return Findings(tuple(errors), parsed.warnings)


# -- preseed ---------------------------------------------------------------------------------------

PRESEED_TYPES = frozenset({"string", "boolean", "select", "multiselect", "note", "password", "text",
                           "error", "title"})


@dataclass(frozen=True)
class PreseedEntry:
    owner: str
    question: str
    type: str
    value: str
    line: int


def parse_preseed(text: str) -> tuple[dict[str, PreseedEntry], Findings]:
    """debconf preseed format: ``owner question type value``; a trailing backslash continues a line."""
    entries: dict[str, PreseedEntry] = {}
    errors: list[Problem] = []
    warned: list[Problem] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i + 1
        logical = lines[i]
        while logical.endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical[:-1] + " " + lines[i].strip()
        i += 1
        stripped = logical.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(None, 3)
        if len(parts) < 3:
            errors.append(Problem("syntax", "preseed syntax error: expected 'owner question type value'",
                                  start))
            continue
        owner, question, qtype = parts[:3]
        value = parts[3] if len(parts) == 4 else ""
        if qtype not in PRESEED_TYPES:
            errors.append(Problem("syntax", f"preseed syntax error: unknown type '{qtype}' (one of "
                                  + ", ".join(sorted(PRESEED_TYPES)) + ")", start))
            continue
        if qtype == "boolean" and value not in ("true", "false"):
            errors.append(Problem("syntax", f"preseed syntax error: {question} is a boolean, not '{value}'",
                                  start))
            continue
        if question in entries:
            warned.append(Problem("duplicate", f"{question} is set twice (line {entries[question].line} "
                                  "and here); the last one wins", start))
        entries[question] = PreseedEntry(owner, question, qtype, value, start)
    return entries, Findings(tuple(errors), tuple(warned))


@dataclass(frozen=True)
class PartmanPartition:
    min: str
    priority: str
    max: str
    fstype: str
    keys: dict[str, str]


def parse_expert_recipe(value: str) -> tuple[str, list[PartmanPartition]]:
    """partman's expert_recipe: ``name :: <min> <prio> <max> <fs> key{ value } ... . <next> .``"""
    name, sep, body = value.partition("::")
    if not sep:
        raise ValueError("an expert_recipe starts with '<name> ::'")
    partitions: list[PartmanPartition] = []
    tokens = body.split()
    if tokens and tokens[-1] != ".":
        tokens.append(".")  # the last partition's closing period is optional
    current: list[str] = []
    depth = 0
    for tok in tokens:
        if tok == "." and depth == 0:
            if current:
                partitions.append(_partman_partition(current))
            current = []
            continue
        depth += tok.count("{") - tok.count("}")
        current.append(tok)
    return name.strip(), partitions


def _partman_partition(tokens: list[str]) -> PartmanPartition:
    if len(tokens) < 4:
        raise ValueError(f"a partition needs '<min> <priority> <max> <filesystem>' first: {' '.join(tokens)}")
    keys: dict[str, str] = {}
    for m in re.finditer(r"(\$?[\w/.-]+)\{([^}]*)\}", " ".join(tokens[4:])):
        keys[m.group(1)] = m.group(2).strip()
    return PartmanPartition(tokens[0], tokens[1], tokens[2], tokens[3], keys)


def lint_preseed(text: str, *, required_packages: Iterable[str] = ()) -> Findings:
    """Parse and check a preseed against the golden-image policy (docs/answer-files.md lists the rules)."""
    entries, parsed = parse_preseed(text)
    errors = list(parsed.errors)

    def err(rule: str, message: str, entry: PreseedEntry | None = None) -> None:
        errors.append(Problem(rule, message, entry.line if entry else None))

    def get(question: str) -> PreseedEntry | None:
        return entries.get(question)

    # Storage: partman's recipe has exactly one partition, '/', that grows; no swap, no LVM.
    method = get("partman-auto/method")
    if method is None:
        err("partman-method", "partman-auto/method is not preseeded: set it to 'regular'")
    elif method.value in ("lvm", "crypto"):
        err("lvm", f"partman-auto/method '{method.value}' makes LVM volumes: LVM is not allowed; use "
            "'regular'", method)
    elif method.value != "regular":
        err("partman-method", f"partman-auto/method must be 'regular', not '{method.value}'", method)
    recipe = get("partman-auto/expert_recipe")
    if recipe is None:
        choose = get("partman-auto/choose_recipe")
        err("partman-recipe", "no partman-auto/expert_recipe: the stock recipes add swap (and /home, /var); "
            "give one with only '/'", choose)
    else:
        try:
            _, parts = parse_expert_recipe(recipe.value)
        except ValueError as exc:
            err("partman-recipe", f"partman-auto/expert_recipe does not parse: {exc}", recipe)
            parts = []
        roots = []
        for part in parts:
            method_key = part.keys.get("method", "")
            mountpoint = part.keys.get("mountpoint")
            if method_key == "swap" or part.fstype == "linux-swap":
                err("swap", "swap is not allowed: the partman recipe has a swap partition", recipe)
            elif method_key in ("lvm",) or "lv_name" in part.keys or part.fstype == "lvm":
                err("lvm", "LVM is not allowed: the partman recipe has an LVM volume", recipe)
            elif method_key in ("raid", "crypto"):
                err("lvm" if method_key == "crypto" else "raid",
                    f"method{{ {method_key} }} is not allowed in the partman recipe", recipe)
            elif mountpoint == "/":
                roots.append(part)
            elif mountpoint:
                err("mount-point", f"the partman recipe adds a second mount point '{mountpoint}': golden "
                    "images have exactly one partition, '/'", recipe)
            else:
                err("extra-partition", f"the partman recipe adds a partition without a mount point "
                    f"(method{{ {method_key} }}): golden images have exactly one partition, '/'", recipe)
        if parts and not roots:
            err("no-root", "the partman recipe has no '/' partition (mountpoint{ / })", recipe)
        if len(roots) > 1:
            err("mount-point", "the partman recipe defines '/' more than once", recipe)
        if roots and roots[0].max not in ("-1",) and not (roots[0].max.isdigit()
                                                         and int(roots[0].max) >= 10**9):
            err("grow", "the / partition must grow to fill the disk: give it a maximum size of -1", recipe)
    no_swap = get("partman-basicfilesystems/no_swap")
    if no_swap is None or no_swap.value != "false":
        err("no-swap-question", "set 'partman-basicfilesystems/no_swap boolean false', else the installer "
            "stops to ask about the missing swap", no_swap)

    # The end of the install: the guest powers itself off without asking.
    poweroff = get("debian-installer/exit/poweroff")
    if poweroff is None or poweroff.value != "true":
        err("no-poweroff", "no poweroff at the end: set 'd-i debian-installer/exit/poweroff boolean true'",
            poweroff)
    halt = get("debian-installer/exit/halt")
    if halt is not None and halt.value == "true":
        err("no-poweroff", "debian-installer/exit/halt waits forever instead of powering off; remove it",
            halt)
    if get("finish-install/reboot_in_progress") is None:
        err("no-poweroff", "set 'd-i finish-install/reboot_in_progress note', else the installer waits for "
            "a key press before powering off")

    # Passwords: crypted hashes only.
    plaintext_root = False
    for q in ("passwd/root-password", "passwd/root-password-again"):
        if (e := get(q)) is not None and e.value:
            plaintext_root = True
            err("plaintext-rootpw", f"{q} is a plaintext root password: use passwd/root-password-crypted",
                e)
    for q in ("passwd/user-password", "passwd/user-password-again"):
        if (e := get(q)) is not None and e.value:
            err("plaintext-password", f"{q} is a plaintext password: use passwd/user-password-crypted", e)
    crypted = get("passwd/root-password-crypted")
    root_login = get("passwd/root-login")
    root_disabled = root_login is not None and root_login.value == "false"
    if crypted is None and not plaintext_root and not root_disabled:
        err("rootpw", "no root password: set 'd-i passwd/root-password-crypted password <hash>'")
    elif crypted is not None and not CRYPT_HASH_RE.match(crypted.value):
        err("rootpw-hash", "passwd/root-password-crypted is not a SHA-256/SHA-512 crypt hash ($5$... or "
            "$6$...)", crypted)

    # DHCP, serial console, bootloader target.
    autoconf = get("netcfg/disable_autoconfig")
    if (autoconf is not None and autoconf.value == "true") or get("netcfg/get_ipaddress") is not None:
        err("network", "a static address is preseeded: golden images get their address by DHCP",
            autoconf if autoconf is not None and autoconf.value == "true" else get("netcfg/get_ipaddress"))
    opts = get("debian-installer/add-kernel-opts")
    if opts is None or not re.search(r"(^|\s)console=ttyS0", opts.value):
        err("serial-console", "the installed system needs a serial console: set "
            f"'d-i debian-installer/add-kernel-opts string console=tty0 console={SERIAL_CONSOLE}'", opts)
    if get("grub-installer/bootdev") is None:
        err("bootloader", "grub-installer/bootdev is not preseeded: set it to the first disk (e.g. "
            "/dev/vda), else the installer asks")

    # Packages.
    include = get("pkgsel/include")
    have = set(include.value.replace(",", " ").split()) if include else set()
    for pkg in required_packages:
        if pkg not in have:
            err("packages", f"package '{pkg}' from the recipe is missing from pkgsel/include", include)

    errors.sort(key=lambda p: (p.line is None, p.line or 0))
    return Findings(tuple(errors), parsed.warnings)


# -- checking --------------------------------------------------------------------------------------

def lint_text(text: str, kind: AnswerFileKind, *, syntax: str = "RHEL7",
              required_packages: Iterable[str] = ()) -> Findings:
    if kind is AnswerFileKind.KICKSTART:
        return lint_kickstart(text, syntax=syntax, required_packages=required_packages)
    return lint_preseed(text, required_packages=required_packages)


def check_answer_file(rendered: RenderedAnswerFile, *, required_packages: Iterable[str] = ()
                      ) -> tuple[Problem, ...]:
    """Raise ``AnswerFileError`` listing every problem; return the warnings."""
    findings = lint_text(rendered.text, rendered.kind, syntax=rendered.syntax,
                         required_packages=required_packages)
    if findings.errors:
        raise AnswerFileError(findings.errors, name=rendered.name, rendered=rendered)
    return findings.warnings


# -- the root password -----------------------------------------------------------------------------

def root_password_source(vm: VMInstall) -> str:
    """Where the password comes from, for people (never the value)."""
    if vm.root_password_file:
        return f"file {vm.root_password_file}"
    return f"environment variable {vm.root_password_env}"


def read_root_password(recipe: Recipe, *, environ: Mapping[str, str] | None = None,
                       reporter: Reporter = NULL_REPORTER) -> str | None:
    """The root password from ``install.vm.root_password_file`` or, if unset, the environment variable.

    Returns None when neither gives one. Raises ``RecipeError`` for an unreadable file or a value that
    cannot be a password.
    """
    vm = recipe.install.vm
    env = os.environ if environ is None else environ
    if vm.root_password_file:
        key = "install.vm.root_password_file"
        path = Path(vm.root_password_file).expanduser()
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()[: _MAX_PASSWORD_BYTES + 2]
        except OSError as exc:
            raise RecipeError(f"cannot read the root password file: {exc.strerror}", file=_leaf(recipe),
                              key=key) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            reporter.info(f"warning: {path} (the root password) is readable by other users; chmod 600 it")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RecipeError("the root password file is not UTF-8 text", file=_leaf(recipe),
                              key=key) from None
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
        where = key
    else:
        value = env.get(vm.root_password_env, "")
        where = "install.vm.root_password_env"
        if not value:
            return None
    if not value:
        raise RecipeError("the root password is empty", file=_leaf(recipe), key=where)
    if len(value.encode()) > _MAX_PASSWORD_BYTES or any(c in value for c in "\n\r\x00"):
        raise RecipeError("the root password must be one line of at most 1024 bytes", file=_leaf(recipe),
                          key=where)
    return value


def hash_password(password: str, *, reporter: Reporter = NULL_REPORTER, salt: str | None = None) -> str:
    """SHA-512 crypt hash of ``password`` via ``openssl passwd -6``; the password goes in on stdin.

    ``salt`` (up to 16 of ``[./A-Za-z0-9]``) makes the hash reproducible; by default openssl picks one.
    """
    argv = ["openssl", "passwd", "-6"]
    if salt is not None:
        if not re.fullmatch(r"[./A-Za-z0-9]{1,16}", salt):
            raise ValueError("a crypt salt is 1-16 characters of [./A-Za-z0-9]")
        argv += ["-salt", salt]
    result = run(argv + ["-stdin"], reporter=reporter, input=password + "\n", secret=password,
                 log_output=False, timeout=60, purpose="hash the root password (SHA-512 crypt)")
    hashed = result.stdout.strip()
    if not CRYPT_HASH_RE.match(hashed):
        raise RecipeError("openssl passwd -6 did not return a SHA-512 crypt hash (is openssl >= 1.1.1?)")
    return hashed


# -- the entry points for tasks and the build -----------------------------------------------------

def validate_recipe(recipe: Recipe, reporter: Reporter = NULL_REPORTER, *, for_build: bool = False,
                    mirrors: Mapping[str, str] | None = None,
                    environ: Mapping[str, str] | None = None) -> None:
    """Everything about the install that can be checked before a download or a VM starts.

    Renders the answer file (with a placeholder password hash), parses it for the target's syntax and
    lints it; raises ``AnswerFileError`` (a ``RecipeError``) listing every problem. A no-op for
    bootstrap recipes. ``for_build=True`` (the start of a build) also requires the root password to be
    available and the installer kernel and initrd to be pinned; ``invoke validate`` only warns.
    """
    if recipe.install.backend is not Backend.VM or recipe.abstract:
        return
    vm = recipe.install.vm
    problems: list[str] = []
    # An ISO is pinned as a whole (the kernel and initrd are read out of it); a tree, file by file.
    for key in ("iso_sha256",) if vm.iso_url else ("kernel_sha256", "initrd_sha256"):
        if not getattr(vm, key) and vm.media_trust == "signed":
            continue  # the archive's signed index supplies the hash (checked before any download)
        if not getattr(vm, key) and vm.media_trust == "first-use":
            problems.append(f"install.vm.{key} is not pinned: the media will be trusted on first use and "
                            "held to that hash afterwards (install.vm.media_trust = 'first-use')")
        elif not getattr(vm, key):
            msg = (f"install.vm.{key} is not pinned: a build boots only pinned media (run the media pin "
                   "helper, verify the values and write them into the recipe)")
            if for_build:
                raise RecipeError(msg.split(": ", 1)[1], file=_leaf(recipe), key=f"install.vm.{key}")
            problems.append(msg)
    try:
        password = read_root_password(recipe, environ=environ, reporter=reporter)
    except RecipeError as exc:
        if for_build:
            raise
        password = ""
        problems.append(str(exc))
    if password is None:
        msg = f"no root password: set {root_password_source(vm)}"
        if for_build:
            raise RecipeError(msg, file=_leaf(recipe), key="install.vm.root_password_env")
        problems.append(msg + " before building")
    if for_build:
        require_tools({"openssl": "hash the root password (openssl passwd -6)"})
    rendered = render_answer_file(recipe, mirrors=mirrors)
    warned = check_answer_file(rendered, required_packages=recipe.packages.all)
    reporter.info(f"answer file {rendered.name} from {vm.template}: {rendered.syntax} syntax and golden "
                  f"policy OK ({rendered.text.count(chr(10))} lines)")
    for w in warned:
        reporter.info(f"warning: {rendered.where(w.line)}: {w.message}")
    for p in problems:
        reporter.info(f"warning: {p}")


def prepare_answer_file(recipe: Recipe, reporter: Reporter = NULL_REPORTER, *,
                        mirrors: Mapping[str, str] | None = None,
                        environ: Mapping[str, str] | None = None,
                        salt: str | None = None) -> RenderedAnswerFile:
    """The real answer file for a build: password read and hashed, rendered, parsed and linted.

    The hash gets a random salt unless ``salt`` is given, so the text differs from build to build;
    a stage cache key should use ``redacted()`` (or pass a stable salt).
    """
    vm = recipe.install.vm
    password = read_root_password(recipe, environ=environ, reporter=reporter)
    if password is None:
        raise RecipeError(f"no root password: set {root_password_source(vm)}", file=_leaf(recipe),
                          key="install.vm.root_password_env")
    hashed = hash_password(password, reporter=reporter, salt=salt)
    del password
    rendered = render_answer_file(recipe, root_password_hash=hashed, mirrors=mirrors)
    for w in check_answer_file(rendered, required_packages=recipe.packages.all):
        reporter.info(f"warning: {rendered.where(w.line)}: {w.message}")
    reporter.log(f"answer file {rendered.name} rendered from {vm.template} (sha256 {rendered.sha256})")
    return rendered

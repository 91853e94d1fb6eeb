"""Answer files: a recipe's Jinja2 template → a rendered kickstart or preseed → parsed → golden-policy lint.

One module per concern, named for it:

- ``render``: the recipe's template rendered (sandboxed, ``StrictUndefined``, deterministic), each
  rendered line traced to the template line it came from.
- ``kickstart``: pykickstart parse for the target's syntax version and the golden-image rules.
- ``preseed``: our own debconf-format parser and the same rules for debian-installer.
- ``lint``: the engine both of those plug into, used by ``invoke lint`` on any file and by
  ``invoke validate`` on a rendered one.
- ``password``: the root password read from a file or the environment and hashed (only the hash
  reaches the answer file).
- ``validate``: the recipe-facing entry points, ``validate_recipe`` and ``prepare_answer_file``.

The names below are the package's public interface; importing them from here keeps callers
independent of the module layout. Nothing in this package starts a VM or touches the network.
"""

from __future__ import annotations

from ..mirrors import resolve_mirrors, rewrite_url, site_mirrors
from .findings import ANSWER_FILE_NAME, AnswerFileKind, Findings, Problem
from .kickstart import KICKSTART_RULES, lint_kickstart, parse_kickstart
from .lint import AnswerFileError, check_answer_file, lint_text
from .password import CRYPT_HASH_RE, hash_password, read_root_password, root_password_source
from .preseed import PRESEED_RULES, PreseedEntry, lint_preseed, parse_expert_recipe, parse_preseed
from .render import (
    COMPLETION_MARKER,
    PLACEHOLDER_HASH,
    SERIAL_CONSOLE,
    TEMPLATE_DIR,
    Origin,
    RenderedAnswerFile,
    answer_file_kind,
    kickstart_syntax,
    render_answer_file,
    template_dirs,
    template_variables,
)
from .validate import prepare_answer_file, validate_recipe

__all__ = [
    "ANSWER_FILE_NAME", "COMPLETION_MARKER", "CRYPT_HASH_RE", "KICKSTART_RULES", "PLACEHOLDER_HASH",
    "PRESEED_RULES", "SERIAL_CONSOLE", "TEMPLATE_DIR", "AnswerFileError", "AnswerFileKind", "Findings",
    "Origin", "PreseedEntry", "Problem", "RenderedAnswerFile", "answer_file_kind", "check_answer_file",
    "hash_password", "kickstart_syntax", "lint_kickstart", "lint_preseed", "lint_text",
    "parse_expert_recipe", "parse_kickstart", "parse_preseed", "prepare_answer_file", "read_root_password",
    "render_answer_file", "resolve_mirrors", "rewrite_url", "root_password_source", "site_mirrors",
    "template_dirs", "template_variables", "validate_recipe",
]

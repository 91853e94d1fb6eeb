"""Template syntax left unrendered: a file meant to go through Jinja, mustache, Oz or Cobbler's Cheetah
that was copied out of its repository before rendering.

Each such line is one ``unrendered-template`` finding, so the user reads "this is a template" instead
of a parser's guess ("unknown command", "plaintext password"). What anaconda and the installers
substitute themselves is not a template: ``$releasever``/``$basearch`` in ``url``/``repo``, and shell
in ``%post``/``late_command`` (``$HOME``, ``date +%Y%m%d``) is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Jinja2 and mustache/handlebars: {{ x }}, {% if %}, {# comment #}, {{{ raw }}}.
_JINJA_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|\{\{|\{%")
# Oz (and many shell-sed template schemes): an upper-case %NAME% standing for a whole value. Two
# characters at least, so date formats (%Y%m%d) and printf's %s never match.
_OZ_RE = re.compile(r"(?:^|(?<=[\s=\"':,]))%[A-Z][A-Z0-9_]+%(?=$|[\s\"',;:/])")
# Cheetah (Cobbler): $SNIPPET('x'), $getVar('x', ''), directives on their own line.
_CHEETAH_CALL_RE = re.compile(r"\$(SNIPPET|getVar|snippet|kickstart_start|kickstart_done)\b\s*\(?")
_CHEETAH_DIRECTIVE_RE = re.compile(r"^\s*#(if\s.*\$|elif\s.*\$|else\s*$|end\s+(if|for|raw|def)\b|for\s.*\$|"
                                   r"set\s+\$|raw\s*$|include\s|import\s|from\s\S+\s+import\s|errorCatcher)")
# A $variable in a kickstart command (not a script): Cobbler's $tree, $hostname... Anaconda itself
# expands only these in url/repo/mirrorlist values.
_DOLLAR_VAR_RE = re.compile(r"(?:^|(?<=[\s=\"':/@-]))\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*)(?![\w{$]))")
# A crypt(3) hash ($6$salt$hash, $y$params$salt$hash, $6$rounds=N$salt$hash): its salt may end in "/"
# or "-"-free alphabet characters and its hash start with a letter, which would read as "/$Name".
_CRYPT_RE = re.compile(r"\$[0-9a-z]{1,4}\$[^\s$]*(?:\$[^\s$]*)+")
ANACONDA_VARIABLES = frozenset({"releasever", "basearch", "arch", "infra", "contentdir", "stream"})


@dataclass(frozen=True)
class Leftover:
    line: int
    engine: str   # jinja, oz, cheetah
    token: str


def find_leftovers(line: str, number: int, *, in_commands: bool) -> Leftover | None:
    """The first template token on this line, or None. ``in_commands``: the line is a command (a
    kickstart command, a preseed value), not shell inside a script."""
    if line.lstrip().startswith("#"):
        # A comment is harmless, unless it is a Cheetah directive (#if $x ... #end if).
        return Leftover(number, "Cheetah (Cobbler)", line.strip()[:60]) if _CHEETAH_DIRECTIVE_RE.match(line) else None
    if m := _JINJA_RE.search(line):
        return Leftover(number, "Jinja/mustache", m.group()[:60])
    if m := _CHEETAH_CALL_RE.search(line):
        return Leftover(number, "Cheetah (Cobbler)", m.group()[:60])
    if _CHEETAH_DIRECTIVE_RE.match(line):
        return Leftover(number, "Cheetah (Cobbler)", line.strip()[:60])
    if m := _OZ_RE.search(line):
        return Leftover(number, "Oz-style %NAME%", m.group())
    if in_commands:
        for m in _DOLLAR_VAR_RE.finditer(_CRYPT_RE.sub("CRYPT-HASH", line)):
            if (m.group(1) or m.group(2)) not in ANACONDA_VARIABLES:  # not partman's $primary{ }
                return Leftover(number, "Cheetah (Cobbler) $variable", m.group())
    return None


def message(left: Leftover) -> str:
    return (f"unrendered template syntax ({left.engine}): '{left.token}'; this file is a template, render it "
            "first (a recipe's template goes through `invoke validate RECIPE`)")

"""Docs that list things are generated from the code that defines them, so they cannot drift:
the README's tables of customize steps (from the step records), of boot-test checks (from the check
records), of tasks (from the invoke tasks) and of
environment variables (from ``settings.VARIABLES``).

``invoke docs`` rewrites the marked sections (``<!-- generated:NAME -->`` ... ``<!-- /generated:NAME -->``);
a unit test fails when the README differs from what the code generates (virt-sysprep builds its manual
from its operations the same way).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from .boottest import all_checks
from .customize import all_steps
from .settings import VARIABLES


def steps_table() -> str:
    rows = ["| step | on | families | what and why |", "|---|---|---|---|"]
    for s in all_steps():
        fam = ", ".join(str(f) for f in s.families)
        text = s.summary if s.description in ("", s.summary) else f"{s.summary}. {s.description}"
        rows.append(f"| `{s.name}` | {'yes' if s.default else 'no'} | {fam} | {text.replace('|', '/')} |")
    return "\n".join(rows)


def checks_table() -> str:
    rows = ["| check | kind | cells (by seed) | what it proves |", "|---|---|---|---|"]
    for c in all_checks():
        seeds = "all" if len(c.seeds) == 4 else ", ".join(str(s) for s in c.seeds)
        when = seeds + (" (second boot)" if c.second_boot else "")
        rows.append(f"| `{c.name}` | {c.kind} | {when} | {c.summary.replace('|', '/')} |")
    return "\n".join(rows)


def tasks_table(tasks: Iterable[Any]) -> str:
    """From invoke Task objects: the name with its flags, and the first line of the docstring."""
    rows = ["| task | what |", "|---|---|"]
    for t in sorted(tasks, key=lambda t: t.name):
        words = [f"invoke {t.name}"]
        for arg in t.get_arguments():
            name = arg.names[0]
            if arg.positional:
                words.append(name.upper())
            elif arg.kind is bool:
                words.append(f"[--{name}]")
            else:
                words.append(f"[--{name} {name.upper().replace('-', '_')}]")
        first = (t.__doc__ or "").strip().splitlines()[0] if (t.__doc__ or "").strip() else ""
        rows.append(f"| `{' '.join(words)}` | {first.replace('|', '/')} |")
    return "\n".join(rows)


def environment_table() -> str:
    rows = ["| variable | what |", "|---|---|"]
    rows += [f"| `{name}` | {what} |" for name, what in VARIABLES.items()]
    return "\n".join(rows)


SECTION = r"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)"


def replace_sections(text: str, sections: dict[str, Callable[[], str]]) -> str:
    for name, make in sections.items():
        pattern = re.compile(SECTION.format(name=re.escape(name)), re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no generated section '{name}'")
        body = make() + "\n"

        def fill(m: re.Match[str], body: str = body) -> str:
            return m.group(1) + body + m.group(3)
        text = pattern.sub(fill, text)
    return text

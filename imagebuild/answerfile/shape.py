"""The shape of an answer file before any parser sees it: size, encoding, line endings, stray characters.

Installers read these files byte by byte and split lines at ``\\n`` only, while Python's
``str.splitlines`` (which pykickstart uses) also splits at U+2028, U+0085, form feeds and more, so
every later line number would disagree with an editor and ``grep -n``. Here the file is decoded once,
each problem of shape is its own finding naming its line, and what the parsers get is a normalized
text with exactly the same lines: CRLF becomes LF (the ``\\r`` would otherwise stay in every ``%post``
script and break it at install time), a BOM is dropped, invalid UTF-8 becomes U+FFFD and every other
control or separator character becomes a space. The findings are errors all the same: the normalized
text is only what lets the rest of the lint run, the file itself must be fixed.

Bounds, so that linting any input takes bounded time (docs/answer-files.md has the measurements):
a file over ``MAX_BYTES`` or with a line over ``MAX_LINE_BYTES`` is refused at once, unread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .findings import Problem

MAX_BYTES = 1 << 20          # 1 MiB: real kickstarts and preseeds are a few KiB, the largest ~100 KiB
MAX_LINE_BYTES = 16 << 10    # 16 KiB: pykickstart's shlex is quadratic in a line's length
MAX_FINDINGS_PER_RULE = 100  # then one summary line: a binary file would otherwise give thousands

SHAPE_RULES = {
    "too-large": f"the file is at most {MAX_BYTES} bytes (1 MiB)",
    "line-too-long": f"no line is longer than {MAX_LINE_BYTES} bytes (16 KiB)",
    "encoding": "the file is UTF-8",
    "bom": "no byte-order mark",
    "crlf": "LF line endings (a CR would stay in every script)",
    "control-character": "no NUL, control or Unicode line-separator characters",
    "unrendered-template": "no template syntax left unrendered (Jinja, mustache, Oz, Cheetah)",
}

# Everything but TAB and LF that an editor or an installer would not show as one plain character,
# including the characters str.splitlines() treats as line breaks (U+0085, U+2028, U+2029, FS/GS/RS).
_BAD_CHAR_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


@dataclass(frozen=True)
class Shaped:
    """The text the parsers see (same lines as the file) and the findings about the file's shape."""
    text: str
    errors: tuple[Problem, ...] = ()
    refused: bool = False  # too large: nothing else was read


def char_name(ch: str) -> str:
    names = {"\x00": "NUL", "\r": "CR", "\x0b": "vertical tab", "\x0c": "form feed", "\x1b": "ESC",
             "\x7f": "DEL", "\x85": "NEL", "\u2028": "LINE SEPARATOR", "\u2029": "PARAGRAPH SEPARATOR",
             "\ufeff": "BYTE ORDER MARK"}
    return f"U+{ord(ch):04X}" + (f" ({names[ch]})" if ch in names else "")


def shape(data: bytes | str) -> Shaped:
    """Check and normalize the raw file. Line numbers count ``\\n`` only, as editors and grep do."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_BYTES:
        return Shaped("", (Problem("too-large", f"the file is {len(raw)} bytes; answer files are at most "
                                   f"{MAX_BYTES} bytes (1 MiB), so it was not read"),), refused=True)
    errors: list[Problem] = []
    lines = raw.split(b"\n")
    for i, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_BYTES:
            return Shaped("", (Problem("line-too-long", f"line {i} is {len(line)} bytes long; lines are at "
                                       f"most {MAX_LINE_BYTES} bytes (16 KiB), so the file was not read", i),),
                          refused=True)
    if raw.startswith(b"\xef\xbb\xbf"):
        errors.append(Problem("bom", "the file starts with a UTF-8 byte-order mark (U+FEFF): installers read "
                              "it as part of the first line; save the file without it", 1))
        lines[0] = lines[0][3:]
    counts: dict[str, int] = {}

    def add(problem: Problem) -> None:
        n = counts[problem.rule] = counts.get(problem.rule, 0) + 1
        if n <= MAX_FINDINGS_PER_RULE:
            errors.append(problem)

    crlf = [i for i, line in enumerate(lines, 1) if line.endswith(b"\r")]
    if crlf:
        more = f" (and {len(crlf) - 1} more line{'s' if len(crlf) > 2 else ''})" if len(crlf) > 1 else ""
        errors.append(Problem("crlf", f"CRLF (Windows) line endings on line {crlf[0]}{more}: the CR stays in "
                              "every script (%post, late_command) and value and breaks them at install time; "
                              "convert the file to LF (dos2unix)", crlf[0]))
    crlf_lines = set(crlf)
    texts: list[str] = []
    offset = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    for i, line in enumerate(lines, 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            add(Problem("encoding", f"line {i} is not UTF-8 (byte 0x{line[exc.start]:02x} at byte offset "
                        f"{offset + exc.start} of the file, column {exc.start + 1}): save the file as UTF-8", i))
            text = line.decode("utf-8", "replace")
        for m in _BAD_CHAR_RE.finditer(text):
            add(Problem("control-character", f"line {i}, column {m.start() + 1}: the control character "
                        f"{char_name(m.group())}; answer files are plain text (a line separator would also "
                        "shift every later line number in some tools)", i))
            break
        texts.append(_BAD_CHAR_RE.sub(" ", text))
        offset += len(line) + (2 if i in crlf_lines else 1)
    for rule, n in counts.items():
        if n > MAX_FINDINGS_PER_RULE:
            errors.append(Problem(rule, f"... and {n - MAX_FINDINGS_PER_RULE} more lines with the same "
                                  "problem (not listed)"))
    return Shaped("\n".join(texts), tuple(errors))

"""The answer-file corpus (tests/data/kickstarts): good files pass the lint, each bad one fails with
exactly the rules, lines and messages its ``# expect:`` lines name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagebuild.answerfile import (
    KICKSTART_RULES,
    PRESEED_RULES,
    AnswerFileError,
    AnswerFileKind,
    lint_text,
)

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parent.parent / "data" / "kickstarts"
GENERATED = {"too-large", "line-too-long"}
EXPECT_RE = re.compile(r"^# expect: (?P<rule>[a-z-]+)(?: line (?P<line>\d+))?: (?P<text>.+)$", re.M)


def corpus(kind: str) -> list[Path]:
    return sorted(p for p in (CORPUS / kind).iterdir() if p.suffix in (".ks", ".preseed"))


def lint(path: Path):
    data = path.read_bytes()  # some files are bad on purpose in their bytes (CRLF, BOM, NUL, Latin-1)
    text = data.decode("utf-8", "replace")
    packages = re.search(r"^# packages: (.*)$", text, re.M)
    # What anaconda writes; EL7's anaconda writes DEVEL, and the older files have none: RHEL7.
    version = re.search(r"^#version=(RHEL\d+|F\d+)$", text, re.M)
    kind = AnswerFileKind.KICKSTART if path.suffix == ".ks" else AnswerFileKind.PRESEED
    return lint_text(data, kind, syntax=version.group(1) if version else "RHEL7",
                     required_packages=packages.group(1).split() if packages else ())


def test_corpus_is_there():
    assert len(corpus("good")) >= 4
    assert len(corpus("bad")) >= 40
    assert any(p.name.startswith("real-world-") for p in corpus("bad"))
    assert any(p.name.startswith("real-world-") for p in corpus("good"))


@pytest.mark.parametrize("path", corpus("good"), ids=lambda p: p.name)
def test_good_answer_files_pass(path: Path):
    findings = lint(path)
    assert findings.errors == (), "\n".join(f"{e.line}: {e.message}" for e in findings.errors)


@pytest.mark.parametrize("path", corpus("bad"), ids=lambda p: p.name)
def test_bad_answer_files_give_their_messages(path: Path):
    text = path.read_bytes().decode("utf-8", "replace")
    expected = [{**m.groupdict(), "text": m["text"].rstrip("\r")} for m in EXPECT_RE.finditer(text)]
    assert expected, f"{path.name} has no '# expect:' lines"
    errors = list(lint(path).errors)
    report = "\n".join(f"  {e.rule} line {e.line}: {e.message}" for e in errors)
    for exp in expected:
        match = [e for e in errors if e.rule == exp["rule"] and exp["text"] in e.message
                 and (exp["line"] is None or e.line == int(exp["line"]))]
        assert match, f"{path.name}: no {exp['rule']} error containing {exp['text']!r}" + (
            f" on line {exp['line']}" if exp["line"] else "") + f"; got:\n{report}"
        errors.remove(match[0])
    assert not errors, f"{path.name}: unexpected errors:\n" + "\n".join(
        f"  {e.rule} line {e.line}: {e.message}" for e in errors)


@pytest.mark.parametrize("suffix,rules", [(".ks", KICKSTART_RULES), (".preseed", PRESEED_RULES)])
def test_corpus_exercises_every_rule(suffix, rules):
    seen = {e.rule for p in corpus("bad") if p.suffix == suffix for e in lint(p).errors}
    # Files over the bounds are made by test_answerfile_lint.py, not kept in the repository.
    assert set(rules) - seen == GENERATED, "rules no bad file exercises"
    assert seen - set(rules) == set(), "rules the registry does not document"


def test_error_names_file_and_line():
    path = CORPUS / "bad" / "swap.ks"
    findings = lint(path)
    err = AnswerFileError(findings.errors, name=str(path))
    assert err.file == str(path) and err.line == 10
    assert f"{path}:10: swap is not allowed" in str(err)

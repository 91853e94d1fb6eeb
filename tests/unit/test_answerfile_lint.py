"""``invoke lint`` and its engine on files of any origin: every syntax pykickstart knows, all findings
with exact lines, templates, encodings, the size bounds, the output formats and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagebuild.answerfile import AnswerFileKind, lint_kickstart
from imagebuild.answerfile.lint import Policy, guess_kind, guess_syntax, known_syntaxes, lint_bytes, lint_text
from imagebuild.answerfile.report import to_sarif
from imagebuild.answerfile.shape import MAX_BYTES, MAX_LINE_BYTES

from ..conftest import ROOT

pytestmark = pytest.mark.unit

CORPUS = ROOT / "tests" / "data" / "kickstarts"
KS = AnswerFileKind.KICKSTART
BOUND_SECONDS = 10  # measured worst case is ~1-3 s on a loaded 2-core host (docs/answer-files.md)


@pytest.mark.parametrize("syntax", known_syntaxes())
def test_every_syntax_pykickstart_knows_lints_without_crashing(syntax):
    findings = lint_kickstart("text\n", syntax=syntax)
    assert "no-root" in {e.rule for e in findings.errors}


@pytest.mark.parametrize("syntax", ["RHEL7", "RHEL8", "RHEL9", "RHEL10", "F40"])
def test_modern_syntaxes_have_good_and_bad_files(syntax):
    tagged = [p for p in (CORPUS / "good").glob("*.ks") if f"#version={syntax}\n" in p.read_text()]
    assert tagged, f"no good {syntax} file"
    bad = [p for p in (CORPUS / "bad").glob("*.ks") if f"#version={syntax}\n".encode() in p.read_bytes()]
    assert bad, f"no bad {syntax} file"


def test_one_typo_never_hides_the_layout():
    r = lint_bytes((CORPUS / "bad" / "el9-cis-layout-em-dash.ks").read_bytes(), "cis.ks")
    rules = [(e.rule, e.line) for e in r.findings.errors]
    assert ("syntax", 30) in rules and ("swap", 23) in rules
    assert sum(1 for rule, _ in rules if rule == "mount-point") == 6  # /boot and five logical volumes


def test_four_bad_lines_give_four_syntax_errors():
    r = lint_bytes((CORPUS / "bad" / "el10-four-bad-lines.ks").read_bytes(), "x.ks")
    assert [e.line for e in r.findings.errors if e.rule == "syntax"] == [6, 8, 12, 14]


def test_a_section_header_warning_points_at_the_header():
    text = "cmdline\nrootpw --lock\n\n%packages --instLangs=en_US\n@core\n%end\n"
    findings = lint_text(text, KS, syntax="RHEL9")
    assert [(w.rule, w.line) for w in findings.warnings] == [("deprecated", 4)]
    # The issue's case: EL7's deprecated %packages --nobase, after a section that had to be closed.
    text = "%post --erroronfail\ntrue\n%packages --nobase\n@core\n%end\n"
    findings = lint_text(text, KS, syntax="RHEL7")
    assert [(w.rule, w.line) for w in findings.warnings] == [("deprecated", 3)]
    assert "line" not in findings.warnings[0].message  # no line count of pykickstart's own
    assert ("syntax", 1) in [(e.rule, e.line) for e in findings.errors]  # %post opened on line 1, not closed
    assert [e.line for e in lint_text(text, KS, syntax="RHEL9").errors
            if e.message.endswith("unrecognized arguments: --nobase")] == [3]  # gone after EL7: an error


def test_unterminated_section_names_the_line_that_opens_it():
    findings = lint_text("cmdline\n%post --erroronfail\ntrue\n\n\n", KS, syntax="RHEL9")
    unterminated = [e for e in findings.errors if "does not end with %end" in e.message]
    assert [e.line for e in unterminated] == [2]


def test_each_unterminated_section_is_named_once_at_its_own_line():
    text = "cmdline\n%packages\n@core --nodefaults --optional\n%end\n%post --erroronfail\n%packages\n"
    errors = lint_text(text, KS, syntax="RHEL9").errors
    assert [(e.line, e.message.split("): ", 1)[1]) for e in errors if e.rule == "syntax"] == [
        (3, "Group cannot specify both --nodefaults and --optional"),
        (5, "section %post (opened on line 5) does not end with %end"),
        (6, "section %packages (opened on line 6) does not end with %end")]


def test_unicode_line_separators_do_not_shift_lines():
    text = "# a\u2028b\u2029c\x85d\x0ce\ncmdline\npart swap --size=1\n"
    findings = lint_text(text, KS, syntax="RHEL9")
    assert ("control-character", 1) in [(e.rule, e.line) for e in findings.errors]
    assert ("swap", 3) in [(e.rule, e.line) for e in findings.errors]


def test_rootpw_lock_is_fine_and_autopart_messages_follow_the_type():
    assert "rootpw" not in {e.rule for e in lint_text("rootpw --lock\n", KS, syntax="RHEL9").errors}
    plain = lint_text("autopart --type=plain --noswap\n", KS, syntax="RHEL9").errors
    assert {e.rule for e in plain} >= {"autopart"} and not {"lvm", "swap"} & {e.rule for e in plain}
    lvm = {e.rule for e in lint_text("autopart\n", KS, syntax="RHEL9").errors}
    assert {"autopart", "lvm", "swap"} <= lvm


@pytest.mark.parametrize("hash_", [
    "$6$rWx1eYh3Qk9/$PNSHb7gXLV2UmeRoipekLc6EgFUtn2QUaW9y80GMPfdpTvdarYcNANGP6rmp8UH2sfEPFPgEYkdgBik59SWH91",
    "$6$rounds=5000$abc/$Xyz.def",
    "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
])
def test_a_crypt_hash_is_not_template_syntax(hash_):
    """A salted hash whose salt ends in '/' and whose hash starts with a letter reads like '/$Name' (one
    render in ~100 tripped over it in CI): it is a hash, not a Cobbler variable."""
    for line in (f"rootpw --iscrypted {hash_}\n", f"user --name=ops --iscrypted --password={hash_}\n"):
        assert "unrendered-template" not in {e.rule for e in lint_text(line, KS, syntax="RHEL9").errors}, line
    assert "unrendered-template" in {e.rule for e in lint_text("network --hostname=$hostname\n", KS,
                                                                 syntax="RHEL9").errors}


def test_no_false_template_alarms_on_anaconda_and_shell_syntax():
    text = ("url --url=http://x/$releasever/$basearch/os/\n"
            "%post --erroronfail\ndate +%Y%m%d\necho $HOME ${PATH}\n%end\n")
    assert "unrendered-template" not in {e.rule for e in lint_text(text, KS, syntax="RHEL9").errors}


def test_policy_none_keeps_syntax_shape_and_templates_only():
    text = b"\xef\xbb\xbfcmdline\r\nurl --url={{ tree }}\r\nkeybaord us\r\npart swap --size=1\r\n"
    rules = {e.rule for e in lint_text(text, KS, syntax="RHEL9", policy=Policy.NONE).errors}
    assert rules == {"bom", "crlf", "unrendered-template", "syntax"}


def test_guessing_says_how():
    assert guess_kind("x.cfg", "d-i a/b string c\nd-i c/d boolean true\n")[0] is AnswerFileKind.PRESEED
    kind, why = guess_kind("anaconda-ks.cfg", "")
    assert kind is KS and "file name" in why
    assert guess_syntax("#version=RHEL8\n")[0] == "RHEL8"
    assert guess_syntax("install\ncmdline\n") == ("RHEL7", guess_syntax("install\n")[1])
    assert "default" in guess_syntax("cmdline\n")[1]


def test_too_large_and_too_long_are_refused_at_once():
    t0 = time.monotonic()
    big = lint_text(b"#" * (MAX_BYTES + 1), KS)
    long_line = lint_text(b"cmdline\n" + b"x" * (MAX_LINE_BYTES + 1) + b"\n", KS)
    assert time.monotonic() - t0 < 1
    assert [e.rule for e in big.errors] == ["too-large"]
    assert [(e.rule, e.line) for e in long_line.errors] == [("line-too-long", 2)]


@pytest.mark.parametrize("shape", ["commands", "sections", "max-lines", "nul"])
def test_the_worst_shapes_within_the_size_limit_take_bounded_time(shape):
    line = b'bootloader --append="' + b"a" * (MAX_LINE_BYTES - 30) + b'"\n'
    data = {"commands": b"network --bootproto=dhcp\n" * (MAX_BYTES // 25),
            "sections": b"%post --erroronfail\n%end\n" * (MAX_BYTES // 25),
            "max-lines": line * (MAX_BYTES // len(line)),
            "nul": b"\x00\n" * (MAX_BYTES // 2)}[shape]
    t0 = time.monotonic()
    findings = lint_text(data, KS, syntax="RHEL9")
    assert time.monotonic() - t0 < BOUND_SECONDS
    assert len(findings.errors) < 1000


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), kind=st.sampled_from(list(AnswerFileKind)),
       syntax=st.sampled_from(["RHEL7", "RHEL8", "RHEL9", "RHEL10", "F40"]))
def test_any_bytes_lint_without_an_exception(data, kind, syntax):
    t0 = time.monotonic()
    findings = lint_text(data, kind, syntax=syntax)
    assert time.monotonic() - t0 < BOUND_SECONDS
    lines = data.count(b"\n") + 1
    assert all(p.line is None or 1 <= p.line <= lines for p in findings.errors + findings.warnings)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.sampled_from([
    "cmdline", "part / --grow", "part swap --size=1", "%post", "%end", "%packages", "@core", "%pre --erroronfail",
    'bootloader --append="x', "{{ x }}", "%ROOTPW%", "$SNIPPET('a')", "rootpw --lock", "autopart", "\u2028",
    "\r", "\x00", "keybaord us", "%include /x", "logvol / --vgname=v --name=r --size=1"]), max_size=30))
def test_any_mix_of_kickstart_shapes_lints(lines):
    text = "\n".join(lines)
    findings = lint_text(text, KS, syntax="RHEL9")
    assert all(p.line is None or 1 <= p.line <= len(lines) for p in findings.errors + findings.warnings)


def _check_sarif(doc: dict) -> None:
    """The parts of SARIF 2.1.0 (OASIS, sections 3.13-3.28) that GitHub code scanning requires."""
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(doc["runs"], list) and doc["runs"]
    for run in doc["runs"]:
        driver = run["tool"]["driver"]
        assert isinstance(driver["name"], str) and driver["name"]
        ids = [r["id"] for r in driver["rules"]]
        assert len(ids) == len(set(ids))
        for rule in driver["rules"]:
            assert rule["shortDescription"]["text"]
            assert rule["defaultConfiguration"]["level"] in ("none", "note", "warning", "error")
        for res in run["results"]:
            assert res["ruleId"] in ids and ids[res["ruleIndex"]] == res["ruleId"]
            assert res["level"] in ("none", "note", "warning", "error")
            assert isinstance(res["message"]["text"], str) and res["message"]["text"]
            for loc in res["locations"]:
                phys = loc["physicalLocation"]
                assert isinstance(phys["artifactLocation"]["uri"], str)
                assert isinstance(phys["region"]["startLine"], int) and phys["region"]["startLine"] >= 1
        assert set(run) <= {"tool", "results"}


def test_sarif_output_has_the_required_2_1_0_structure(monkeypatch):
    monkeypatch.chdir(ROOT)
    paths = [CORPUS / "bad" / "el9-packer-bento.ks", CORPUS / "bad" / "crlf.preseed", CORPUS / "good" / "el8-golden.ks"]
    results = [lint_bytes(p.read_bytes(), str(p.relative_to(ROOT))) for p in paths]
    doc = json.loads(json.dumps(to_sarif(results)))
    _check_sarif(doc)
    results_ = doc["runs"][0]["results"]
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results_} == {
        "tests/data/kickstarts/bad/el9-packer-bento.ks", "tests/data/kickstarts/bad/crlf.preseed"}
    assert {"ruleId": "kickstart/plaintext-rootpw", "line": 8} in [
        {"ruleId": r["ruleId"], "line": r["locations"][0]["physicalLocation"]["region"]["startLine"]}
        for r in results_]
    with pytest.raises(AssertionError):
        _check_sarif({**doc, "version": "2.0.0"})  # the check can fail


def _invoke(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "lint", *args], cwd=cwd,
                          capture_output=True, text=True)


def test_invoke_lint_exit_codes_and_formats(tmp_path):
    good, bad = CORPUS / "good" / "el10-golden.ks", CORPUS / "bad" / "oz-template-unrendered.ks"
    res = _invoke(str(good))
    assert res.returncode == 0 and "ok, 0 warnings (kickstart, RHEL10)" in res.stdout, res.stderr
    assert "taken as syntax RHEL10, from the file's '#version=RHEL10' line" in res.stdout
    res = _invoke(f"{good},{bad}", "--format", "json")
    assert res.returncode == 2 and "taken as syntax RHEL7, from the file's '#version=RHEL7' line" in res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert {(r["file"], r["line"], r["rule"]) for r in rows} == {
        (str(bad), 5, "unrendered-template"), (str(bad), 10, "unrendered-template")}
    out = tmp_path / "lint.sarif"
    res = _invoke(str(bad), "--format", "sarif", "--output", str(out))
    assert res.returncode == 2
    _check_sarif(json.loads(out.read_text()))
    res = _invoke(str(good), "--syntax", "RHEL99")
    assert res.returncode == 2 and "RHEL9" in res.stderr and "Traceback" not in res.stderr
    res = _invoke(str(tmp_path / "missing.ks"))
    assert res.returncode == 2 and "cannot read" in res.stderr and "Traceback" not in res.stderr

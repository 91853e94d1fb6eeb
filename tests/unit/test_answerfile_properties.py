"""Property-based tests of answer-file rendering and checking.

Recipe authors write child templates that override blocks of the base templates, and fill variables.
Whatever they write: rendering never fails with anything but a typed ``RecipeError``, rendering is
deterministic, and every rendered file is either accepted or rejected with an ``AnswerFileError`` whose
problems all point at real lines of the rendered file and of a template.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagebuild.answerfile import (
    TEMPLATE_DIR,
    AnswerFileError,
    AnswerFileKind,
    check_answer_file,
    lint_text,
    render_answer_file,
)
from imagebuild.errors import RecipeError
from imagebuild.recipe import load_recipe

pytestmark = pytest.mark.unit

KS_BLOCKS = ["install_source", "repos", "locale", "network", "security", "users", "storage", "services",
             "enabled_services", "extra_commands", "packages_extra", "packages_exclude", "addons", "post",
             "post_scripts"]
PRESEED_BLOCKS = ["locale", "network", "mirror", "users", "clock", "storage", "apt", "packages",
                  "bootloader", "late_commands"]

# Lines a recipe author might write: good ones, policy violations, kickstart syntax errors, template
# expressions (defined and not), template syntax errors.
KS_FRAGMENTS = [
    "part / --fstype=xfs --size=1024 --grow", "part swap --size=512", "part /home --size=100",
    "part / --size=100", "part pv.01 --size=100", "volgroup vg pv.01",
    "logvol / --vgname=vg --name=r --size=1", "autopart", "autopart --type=lvm", "reqpart", "zerombr",
    "clearpart --all --initlabel", "clearpart --none",
    'bootloader --location=mbr --append="console=ttyS0,115200n8"', "bootloader --location=none",
    "rootpw changeme", "rootpw --iscrypted {{ root_password_hash }}", "rootpw --iscrypted nothash",
    "user --name=u --password=p", "poweroff", "shutdown", "reboot", "halt", "cmdline", "text", "graphical",
    "network --bootproto=dhcp", "network --bootproto=static --ip=192.0.2.1 --netmask=255.255.255.0",
    "%post\ntrue\n%end", "%post --erroronfail\ntrue\n%end", "%pre\ntrue\n%end", "%packages\nvim\n%end",
    "%packages --ignoremissing\n@core\n%end", "-vim", "vim", "@core", "%include /tmp/x", "%end",
    "firewal --on", "part / --grwo", 'bootloader --append="unclosed', "url --url={{ tree_url }}",
    "timezone {{ timezone }}", "{{ packages | join(' ') }}", "{% for p in packages %}{{ p }}\n{% endfor %}",
    "{{ undefined_variable }}", "{% if %}", "{{ 1 / 0 }}", "{{ packages[99] }}",
    "{% raw %}{{ x }}{% endraw %}",
    "{{ completion_marker[:3] }}", "# a comment", "",
]
PRESEED_FRAGMENTS = [
    "d-i partman-auto/method string lvm", "d-i partman-auto/method string regular",
    "d-i partman-auto/expert_recipe string x :: 1 1 -1 ext4 method{ swap } .",
    "d-i partman-auto/expert_recipe string x :: 1 1 -1 ext4 method{ format } mountpoint{ /var } .",
    "d-i partman-auto/expert_recipe string broken", "d-i partman-basicfilesystems/no_swap boolean true",
    "d-i passwd/root-password password changeme", "d-i passwd/root-password-crypted password x",
    "d-i debian-installer/exit/poweroff boolean false", "d-i debian-installer/exit/halt boolean true",
    "d-i netcfg/disable_autoconfig boolean true", "d-i pkgsel/include string vim",
    "d-i oops", "d-i a/b strnig x", "d-i a/b boolean maybe", "d-i x/y string \\",
    "{{ undefined_variable }}", "{% if %}", "{{ packages | join(' ') }}", "# comment", "",
]
free_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
line = st.one_of(st.sampled_from(KS_FRAGMENTS), free_text)
preseed_line = st.one_of(st.sampled_from(PRESEED_FRAGMENTS), free_text)
variable = st.one_of(
    st.sampled_from(["UTC", "en_US.UTF-8", "us", "vda", "xfs", "ext4", "", "a b", '"', "\\"]), free_text)


def child_template(base: str, blocks: list[str], lines: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    override = st.tuples(st.sampled_from(blocks), st.lists(lines, max_size=6))
    return st.lists(override, max_size=5).map(
        lambda overrides: f'{{% extends "{base}" %}}\n' + "".join(
            f"{{% block {name} %}}\n" + "\n".join(body) + "\n{% endblock %}\n"
            for name, body in dict(overrides).items()))


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("templates")


def recipe_with(name: str, template_dir: Path, child: str, suffix: str, variables: dict[str, str]):
    file = f"t{hashlib.sha256(child.encode()).hexdigest()[:16]}{suffix}"
    (template_dir / file).write_text(child)
    recipe = load_recipe(name)
    vm = dataclasses.replace(recipe.install.vm, template=file,
                             variables={**recipe.install.vm.variables, **variables})
    return dataclasses.replace(recipe, install=dataclasses.replace(recipe.install, vm=vm))


def assert_render_then_check(recipe, dirs):
    try:
        first = render_answer_file(recipe, dirs=dirs)
    except RecipeError as exc:
        # Rejected before parsing; the same input gives the same error.
        with pytest.raises(RecipeError) as again:
            render_answer_file(recipe, dirs=dirs)
        assert str(again.value) == str(exc)
        return "render-error"
    second = render_answer_file(recipe, dirs=dirs)
    assert first.text == second.text and first.origins == second.origins
    assert "\x1e" not in first.text and "\x1f" not in first.text  # tracing markers are all gone
    lines = first.text.splitlines()
    assert len(first.origins) == len(lines)
    try:
        check_answer_file(first, required_packages=recipe.packages.all)
    except AnswerFileError as exc:
        assert exc.problems and str(exc)
        for problem in exc.problems:
            if problem.line is not None:
                assert 1 <= problem.line <= max(len(lines), 1)
                if lines:
                    assert first.origin(problem.line) is not None
        return "rejected"
    return "accepted"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(child=child_template("el7-base.ks.j2", KS_BLOCKS, line),
       variables=st.dictionaries(st.sampled_from(["timezone", "lang", "keymap", "disk", "root_fstype",
                                                   "kernel_append"]), variable, max_size=3))
def test_any_kickstart_template_renders_deterministically_or_fails_typed(template_dir, child, variables):
    recipe = recipe_with("centos7", template_dir, child, ".ks.j2", variables)
    assert_render_then_check(recipe, [template_dir, TEMPLATE_DIR])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(child=child_template("debian-base.preseed.j2", PRESEED_BLOCKS, preseed_line),
       variables=st.dictionaries(st.sampled_from(["timezone", "locale", "hostname", "disk", "mirror",
                                                   "suite"]), variable, max_size=3))
def test_any_preseed_template_renders_deterministically_or_fails_typed(template_dir, child, variables):
    recipe = recipe_with("debian12-preseed", template_dir, child, ".preseed.j2", variables)
    assert_render_then_check(recipe, [template_dir, TEMPLATE_DIR])


def test_the_unchanged_base_templates_are_accepted(template_dir):
    for name, base, suffix in (("centos7", "el7-base.ks.j2", ".ks.j2"),
                               ("debian12-preseed", "debian-base.preseed.j2", ".preseed.j2")):
        recipe = recipe_with(name, template_dir, f'{{% extends "{base}" %}}\n', suffix, {})
        assert assert_render_then_check(recipe, [template_dir, TEMPLATE_DIR]) == "accepted"


@settings(max_examples=150, deadline=None)
@given(text=st.lists(line, max_size=25).map("\n".join))
def test_kickstart_lint_never_raises(text):
    findings = lint_text(text, AnswerFileKind.KICKSTART, required_packages=("vim",))
    assert all(p.line is None or p.line >= 1 for p in findings.errors)


@settings(max_examples=150, deadline=None)
@given(text=st.lists(preseed_line, max_size=25).map("\n".join))
def test_preseed_lint_never_raises(text):
    findings = lint_text(text, AnswerFileKind.PRESEED, required_packages=("vim",))
    assert all(p.line is None or p.line >= 1 for p in findings.errors)

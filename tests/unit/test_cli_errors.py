"""Bad input fails fast, with a message naming the file and key, a documented exit code, and nothing
started: no work dir, no download, no VM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagebuild.errors import PreflightError
from imagebuild.pipeline import check_free_space

from ..conftest import run_invoke

pytestmark = pytest.mark.unit


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update({"IMAGEBUILD_OUTPUT": str(tmp_path / "out"), "IMAGEBUILD_WORK": str(tmp_path / "work"),
              "IMAGEBUILD_RECIPE_PATH": str(tmp_path / "recipes")})
    (tmp_path / "recipes").mkdir()
    return e


def nothing_started(env: dict[str, str]) -> bool:
    work = Path(env["IMAGEBUILD_WORK"])
    return not work.exists() or not any(work.iterdir())


def test_unknown_recipe(env):
    res = run_invoke(["build", "nosuchrecipe"], env)
    assert res.returncode == 2
    assert "no recipe named 'nosuchrecipe'" in res.stderr and "debian12" in res.stderr
    assert nothing_started(env)


def test_unknown_key_and_bad_type_name_file_and_key(env):
    rdir = Path(env["IMAGEBUILD_RECIPE_PATH"])
    (rdir / "typo.toml").write_text('extends = "debian12"\n[boot_test]\nmemroy_mib = 512\n')
    res = run_invoke(["build", "typo"], env)
    assert res.returncode == 2 and f"{rdir / 'typo.toml'}, key 'boot_test.memroy_mib': unknown key" in res.stderr
    (rdir / "badtype.toml").write_text('extends = "debian12"\n[image]\ndisk_gib = "big"\n')
    res = run_invoke(["build", "badtype"], env)
    assert res.returncode == 2 and "key 'image.disk_gib': expected an integer" in res.stderr
    assert nothing_started(env)


def test_policy_violation_in_answer_file_is_refused_before_any_download(env, tmp_path):
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "swap.ks.j2").write_text('{% extends "centos7.ks.j2" %}\n{% block extra_commands %}'
                                     "part swap --size=512\n{% endblock %}\n")
    (Path(env["IMAGEBUILD_RECIPE_PATH"]) / "withswap.toml").write_text(
        'extends = "centos7"\n[install.vm]\ntemplate = "swap.ks.j2"\ntree_url = "http://192.0.2.1/none/"\n')
    env = {**env, "IMAGEBUILD_TEMPLATE_PATH": str(tdir), "IMAGEBUILD_ROOT_PASSWORD": "x"}
    res = run_invoke(["build", "withswap"], env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "swap" in res.stderr and "ks.cfg:" in res.stderr and "swap.ks.j2" in res.stderr
    assert "downloading" not in res.stderr
    assert nothing_started(env)


def test_abstract_recipe_is_not_built(env):
    res = run_invoke(["build", "debian-base"], env)
    assert res.returncode == 1 and "abstract" in res.stderr
    assert nothing_started(env)


def test_free_space_preflight_names_the_directory(tmp_path):
    with pytest.raises(PreflightError, match=f"{tmp_path} has .* GiB free; the test needs at least 1000000 GiB"):
        check_free_space(tmp_path, 1000000, "the test")


@pytest.mark.parametrize("var, value, message", [
    ("IMAGEBUILD_ACCEL", "kvmm", "IMAGEBUILD_ACCEL='kvmm': must be kvm or tcg"),
    ("IMAGEBUILD_OUPUT", "/tmp/x", "IMAGEBUILD_OUPUT is not a setting; did you mean IMAGEBUILD_OUTPUT?"),
    ("IMAGEBUILD_WORK", " ", "IMAGEBUILD_WORK is set but empty"),
    ("IMAGEBUILD_WORK_TMPFS", "yes", "IMAGEBUILD_WORK_TMPFS='yes': must be auto or off"),
])
def test_bad_environment_is_an_error_before_anything_starts(env, var, value, message):
    res = run_invoke(["build", "debian12"], {**env, var: value})
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert nothing_started(env)


def test_a_recipes_own_password_variable_is_not_a_typo():
    from imagebuild.settings import Settings
    s = Settings.from_environ({"IMAGEBUILD_PASSWORD_CENTOS": "x", "IMAGEBUILD_ACCEL": "tcg"})
    assert s.accel == "tcg"

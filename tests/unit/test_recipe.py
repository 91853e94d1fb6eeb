from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild.errors import RecipeError
from imagebuild.recipe import BASE_PACKAGES, Backend, Recipe, list_recipes, load_recipe

pytestmark = pytest.mark.unit

BASE = """
abstract = true
description = "base"
[image]
os_distro = "debian"
os_version = ""
family = "debian"
[install]
backend = "bootstrap"
[install.bootstrap]
include = ["linux-image-amd64"]
"""


def write(d: Path, name: str, text: str) -> Path:
    p = d / f"{name}.toml"
    p.write_text(text)
    return p


def test_shipped_recipes_load_and_round_trip():
    for name in list_recipes():
        r = load_recipe(name)
        assert Recipe.from_json(r.to_json()) == r
        assert json.loads(r.to_json())["name"] == name


def test_debian12_resolves_its_parent():
    r = load_recipe("debian12")
    assert r.install.backend is Backend.BOOTSTRAP
    assert r.install.bootstrap.suite == "bookworm"
    assert r.image.os_version == "12"
    assert not r.abstract  # abstract is never inherited
    assert [Path(s).stem for s in r.sources] == ["debian12", "debian-base"]
    assert r.packages.all[: len(BASE_PACKAGES)] == BASE_PACKAGES
    assert "qemu-guest-agent" in r.packages.all


def test_child_overrides_only_what_differs(tmp_path):
    write(tmp_path, "base", BASE)
    write(tmp_path, "child", 'extends = "base"\n[image]\nos_version = "9"\ndisk_gib = 5\n')
    r = load_recipe("child", [tmp_path])
    assert (r.image.os_version, r.image.disk_gib, r.image.os_distro) == ("9", 5, "debian")
    assert r.install.bootstrap.include == ("linux-image-amd64",)


def test_unknown_key_names_file_and_key(tmp_path):
    write(tmp_path, "base", BASE)
    child = write(tmp_path, "child", 'extends = "base"\n[image]\nos_versoin = "9"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe("child", [tmp_path])
    assert e.value.file == str(child) and e.value.key == "image.os_versoin"
    assert "unknown key" in str(e.value) and "os_version" in str(e.value)


def test_wrong_type_blames_the_file_that_set_it(tmp_path):
    base = write(tmp_path, "base", BASE.replace('[install.bootstrap]', '[boot_test]\nmemory_mib = "lots"\n'
                                                 '[install.bootstrap]'))
    write(tmp_path, "child", 'extends = "base"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe("child", [tmp_path])
    assert e.value.file == str(base) and e.value.key == "boot_test.memory_mib"
    assert "expected an integer" in str(e.value)


def test_bad_enum_and_list_item(tmp_path):
    write(tmp_path, "a", BASE.replace('backend = "bootstrap"', 'backend = "floppy"'))
    with pytest.raises(RecipeError, match="install.backend.*one of 'bootstrap', 'vm'"):
        load_recipe("a", [tmp_path])
    write(tmp_path, "b", BASE.replace('["linux-image-amd64"]', '["linux-image-amd64", 3]'))
    with pytest.raises(RecipeError, match=r"install.bootstrap.include\[1\].*expected a string"):
        load_recipe("b", [tmp_path])


def test_malformed_toml_names_the_line(tmp_path):
    p = write(tmp_path, "bad", 'description = "x"\n[image\nos_distro = "debian"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe("bad", [tmp_path])
    assert e.value.file == str(p) and e.value.line == 2


def test_missing_parent_and_cycle(tmp_path):
    write(tmp_path, "orphan", 'extends = "nobody"\n')
    with pytest.raises(RecipeError, match="parent recipe not found.*nobody"):
        load_recipe("orphan", [tmp_path])
    write(tmp_path, "x", 'extends = "y"\n')
    write(tmp_path, "y", 'extends = "x"\n')
    with pytest.raises(RecipeError, match="cycle: x -> y -> x"):
        load_recipe("x", [tmp_path])


def test_unknown_recipe_lists_known_ones(tmp_path):
    write(tmp_path, "base", BASE)
    with pytest.raises(RecipeError, match="no recipe named 'nosuch'.*base"):
        load_recipe("nosuch", [tmp_path])


def test_moving_suite_alias_is_refused(tmp_path):
    write(tmp_path, "base", BASE)
    write(tmp_path, "c", 'extends = "base"\n[install.bootstrap]\nsuite = "stable"\n')
    with pytest.raises(RecipeError, match="install.bootstrap.suite.*name the release"):
        load_recipe("c", [tmp_path])


def test_bad_package_name(tmp_path):
    write(tmp_path, "base", BASE)
    write(tmp_path, "c", 'extends = "base"\n[packages]\nextra = ["vim; rm -rf /"]\n')
    with pytest.raises(RecipeError, match=r"packages.extra\[0\].*not a valid package name"):
        load_recipe("c", [tmp_path])


toml_scalars = st.one_of(st.integers(-5, 5000), st.booleans(), st.text(max_size=12),
                         st.lists(st.text(max_size=8), max_size=3))
sections = st.dictionaries(st.sampled_from(["os_version", "disk_gib", "min_ram_mib", "compat", "family",
                                            "bogus"]), toml_scalars, max_size=4)


def _toml_value(v):
    return json.dumps(v)  # JSON scalars and string lists are valid TOML


@settings(max_examples=60, deadline=None)
@given(image=sections, bt=st.dictionaries(st.sampled_from(["memory_mib", "vcpus", "enabled", "tcg_factor"]),
                                          toml_scalars, max_size=3))
def test_any_override_loads_or_raises_recipe_error(tmp_path_factory, image, bt):
    d = tmp_path_factory.mktemp("h")
    write(d, "base", BASE)
    body = 'extends = "base"\n[image]\n' + "".join(f"{k} = {_toml_value(v)}\n" for k, v in image.items())
    body += "[boot_test]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in bt.items())
    write(d, "c", body)
    try:
        r = load_recipe("c", [d])
    except RecipeError as exc:
        assert exc.file and str(exc)
    else:
        assert Recipe.from_json(r.to_json()) == r

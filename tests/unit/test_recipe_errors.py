"""A recipe with several mistakes gets every one in one report, each naming its file and key; a recipe
file that is not UTF-8 is a clear error with the byte offset, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imagebuild.errors import RecipeError, RecipeErrors
from imagebuild.recipe import load_recipe

from ..conftest import ROOT
from .test_recipe import BASE, write

pytestmark = pytest.mark.unit


def test_three_mistakes_give_three_messages(tmp_path):
    write(tmp_path, "base", BASE)
    child = write(tmp_path, "child", 'extends = "base"\n[image]\nos_versoin = "9"\ndisk_gib = 0\n'
                                     '[packages]\nextra = ["ok", "no spaces"]\n[boot_test]\nvcpus = 0\n')
    with pytest.raises(RecipeError) as e:
        load_recipe("child", [tmp_path])
    # An unknown key means there is no recipe to check the rules on: they run once it is fixed.
    assert (e.value.file, e.value.key) == (str(child), "image.os_versoin")

    child.write_text('extends = "base"\n[image]\ncompat = "2"\n[packages]\nextra = ["ok", "no spaces"]\n'
                     '[boot_test]\ntcg_factor = 0\n')
    with pytest.raises(RecipeErrors) as e:
        load_recipe("child", [tmp_path])
    assert [x.key for x in e.value.errors] == ["image.compat", "packages.extra[1]", "boot_test.tcg_factor"]
    assert all(x.file == str(child) for x in e.value.errors)
    assert e.value.exit_code == 2 and e.value.key == "image.compat" and e.value.file == str(child)
    assert "the recipe has 3 problems" in str(e.value) and str(e.value).count(f"{child}, key '") == 3


def test_type_errors_anywhere_in_the_tree_are_collected(tmp_path):
    write(tmp_path, "base", BASE)
    write(tmp_path, "child", 'extends = "base"\n[boot_test]\nmemory_mib = "lots"\nvcpus = "two"\n'
                             '[install.bootstrap]\ninclude = ["a", 3]\n')
    with pytest.raises(RecipeErrors) as e:
        load_recipe("child", [tmp_path])
    assert sorted(x.key for x in e.value.errors) == ["boot_test.memory_mib", "boot_test.vcpus",
                                                     "install.bootstrap.include[1]"]


def test_one_mistake_is_still_a_plain_recipe_error(tmp_path):
    write(tmp_path, "base", BASE)
    write(tmp_path, "child", 'extends = "base"\n[image]\ncompat = "2"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe("child", [tmp_path])
    assert not isinstance(e.value, RecipeErrors) and e.value.key == "image.compat"


def test_a_recipe_that_is_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'description = "caf\xe9"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    assert e.value.file == str(path) and e.value.line == 1
    assert "not UTF-8 text: byte 0xe9 at byte offset 18 (line 1)" in str(e.value)
    res = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "validate", str(path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "byte offset 18" in res.stderr and "Traceback" not in res.stderr


def test_a_name_in_the_file_is_an_error_not_silently_replaced(tmp_path):
    # a recipe's name is its file's: a `name` key could never take effect
    write(tmp_path, "base", BASE)
    child = write(tmp_path, "child", 'extends = "base"\nname = "golden"\n[image]\nos_version = "12"\n')
    with pytest.raises(RecipeError) as e:
        load_recipe("child", [tmp_path])
    assert not isinstance(e.value, RecipeErrors)
    assert (e.value.file, e.value.key) == (str(child), "name")
    assert "cannot be set in a recipe: a recipe's name is the name of its file" in str(e.value)


def test_keys_the_loader_sets_are_reported_with_the_other_mistakes(tmp_path):
    base = write(tmp_path, "base", 'name = "base-image"\n' + BASE)
    child = write(tmp_path, "child", 'extends = "base"\nsources = ["x.toml"]\n[image]\nos_versoin = "12"\n')
    with pytest.raises(RecipeErrors) as e:
        load_recipe("child", [tmp_path])
    assert [(x.file, x.key) for x in e.value.errors] == [
        (str(base), "name"), (str(child), "sources"), (str(child), "image.os_versoin")]

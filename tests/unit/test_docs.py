"""The README's lists of steps and tasks are what the code generates (`invoke docs`): they cannot drift."""

from __future__ import annotations

import importlib.util

import pytest

from imagebuild.docgen import checks_table, environment_table, replace_sections, steps_table, tasks_table

from ..conftest import ROOT

pytestmark = pytest.mark.unit


def test_readme_lists_are_generated_from_the_code():
    spec = importlib.util.spec_from_file_location("project_tasks", ROOT / "tasks.py")
    assert spec and spec.loader
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    readme = (ROOT / "README.md").read_text()
    want = replace_sections(readme, {"steps": steps_table, "tasks": lambda: tasks_table(tasks.TASKS),
                                       "environment": environment_table, "checks": checks_table})
    assert readme == want, "README.md lists differ from the code: run `invoke docs`"
    assert "`hotplug`" in readme and "`invoke boot-test IMAGE" in readme and "`ssh-login`" in readme

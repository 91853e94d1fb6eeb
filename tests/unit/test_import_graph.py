"""No import cycles in ``imagebuild``, counting imports inside functions and under ``TYPE_CHECKING``: an
import moved out of the module's top hides a cycle, it does not end it (``../shared/ARCHITECTURE.md``,
"Rules"). Importing ``a.b.c`` runs ``a/b/__init__.py`` first, so it counts as an import of ``a.b`` too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.unit

PACKAGE = ROOT / "imagebuild"

def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _parents(module: str) -> set[str]:
    """The packages Python runs before ``module``: ``a.b.c`` imports ``a`` and ``a.b`` first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The imagebuild modules ``name`` imports anywhere in its file."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()

    def visit(node: ast.AST) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name`: an edge to pkg.name when that is a module, else to pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target in modules:
                edges.add(target)
                edges.update(_parents(target) - _parents(name) - {name})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, and modules that import themselves
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_graph_sees_every_import():
    graph = import_graph()
    assert "imagebuild.errors" in graph["imagebuild.recipe.load"]
    # inside a function: the VM installer is loaded only for a recipe that uses it
    assert "imagebuild.install.vm" in graph["imagebuild.install.backends"]
    # a submodule's package runs first: importing imagebuild.install.media imports imagebuild.install
    assert {"imagebuild.install", "imagebuild.install.media"} <= graph["imagebuild.preflight"]
    # a registry imports its members at its top, and they import its registry module, not the package
    assert "imagebuild.customize.packages" in graph["imagebuild.customize"]
    assert "imagebuild.customize.registry" in graph["imagebuild.customize.packages"]
    assert "imagebuild.boottest.checks.cloud" in graph["imagebuild.boottest.checks"]
    assert _cycles({"a": {"b"}, "b": {"a", "d"}, "c": {"c"}, "d": set()}) == [["a", "b"], ["c"]]


def test_no_import_cycles():
    graph = import_graph()
    cycles = _cycles(graph)
    report = []
    for component in cycles:
        members = set(component)
        report.append(" <-> ".join(component) + "\n" + "\n".join(
            f"    {a} imports {b}" for a in component for b in sorted(graph[a] & members)))
    assert not cycles, "import cycles in imagebuild:\n" + "\n".join(report)

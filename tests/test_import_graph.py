"""The package's import graph, read with ast from the source: no import circle but the deliberate
`cli.main <-> cli.root` help path (a package `__init__` importing its own modules counts; imports
inside functions and under TYPE_CHECKING count too, being dependencies all the same), and no
module importing another module's private `_name`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qinfra"
ALLOWED_CYCLES = [{"qinfra.cli.main", "qinfra.cli.root"}]


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_package = False  # relative imports are resolved against the importing module's package
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Edges between qinfra modules, and every `from X import _private` across modules."""
    modules = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        edges[module].add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                if not source.startswith("qinfra"):
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        edges[module].add(submodule)
                    elif source in modules:
                        edges[module].add(source)
                        if (alias.name.startswith("_") and not alias.name.startswith("__")
                                and source != module):
                            private.append(f"{module}: from {source} import {alias.name}")
    for module in edges:
        edges[module].discard(module)
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_but_the_help_path() -> None:
    edges, _ = graph(PACKAGE)
    assert sorted(map(sorted, cycles(edges))) == sorted(map(sorted, ALLOWED_CYCLES))


def test_no_private_name_is_imported_across_modules() -> None:
    _, private = graph(PACKAGE)
    assert private == []


@pytest.mark.parametrize(("module", "line", "why"), [
    # a circle through a package __init__ that imports its own module (local imports the
    # package's DeployInput)
    ("deploy/targets/__init__.py", "from qinfra.deploy.targets import local", "circle"),
    # a circle through an import inside a function
    ("core/paths.py", "def _x():\n    from qinfra.core import errors\n", "circle"),
    ("cli/stack.py", "from qinfra.cli.options import _private_name", "private"),
])
def test_the_checks_see_an_injected_fault(tmp_path: Path, module: str, line: str, why: str) -> None:
    import shutil

    copy = tmp_path / "qinfra"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    if why == "circle" and module == "core/paths.py":
        # errors -> paths closes the circle paths -> errors
        (copy / "core/errors.py").write_text("from qinfra.core import paths  # noqa\n"
                                             + (copy / "core/errors.py").read_text())
    target.write_text(line + "\n" + target.read_text())
    edges, private = graph(copy)
    if why == "circle":
        assert len(cycles(edges)) > len(ALLOWED_CYCLES)
    else:
        assert private == ["qinfra.cli.stack: from qinfra.cli.options import _private_name"]

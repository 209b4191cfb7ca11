"""The import graph of ``obsml/`` runs one way: down.

The rule: every import of an obsml module by another (at the top, inside a function, or under
``TYPE_CHECKING``: each is a dependency a reader must follow) goes to a lower module, so the
graph has no circles, and the modules stack in floors, each importing only from floors below
it. The floors here are the longest chain of imports under a module, so "lower" is what the
graph says, not a list to keep up to date. ``obsml/__init__.py`` is the top: no module imports it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "obsml"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The obsml modules ``path`` imports, wherever in it the import statement is."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # ``from . import _x``
    return {name for name in found if name in modules} - {module_name(path)}


@cache
def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def circle_through(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports in ``graph`` (as the chain of modules), or None when there is none."""
    state: dict[str, str] = {}  # "open" while on the current chain, "done" after
    chain: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        chain.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return [*chain[chain.index(imported):], imported]
            if imported not in state and (circle := visit(imported)) is not None:
                return circle
        chain.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)) is not None:
            return circle
    return None


def test_the_import_graph_reads_the_modules_it_should() -> None:
    graph = import_graph()
    assert "obsml._pipeline" in graph["obsml.asgi"]
    assert "obsml._capture" in graph["obsml._tracing"]  # under TYPE_CHECKING: counted too
    assert "obsml.asgi" in graph["obsml"]


def test_no_module_of_obsml_imports_itself_back_through_another() -> None:
    circle = circle_through(import_graph())
    assert circle is None, "an import circle: " + " -> ".join(circle or [])


def test_nothing_imports_the_package_itself_from_inside() -> None:
    assert not [module for module, imported in import_graph().items() if "obsml" in imported]

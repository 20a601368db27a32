"""Core's module layout: no import cycles, function-level imports included (a cycle hidden inside a function still
ties two modules together and breaks as soon as one of them imports the other at the top)."""

from __future__ import annotations

import ast
from pathlib import Path

import trainhub

SRC = Path(trainhub.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """trainhub modules imported anywhere in ``tree`` (functions included, ``if TYPE_CHECKING:`` blocks not)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "trainhub")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "trainhub":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {m: _imports(ast.parse(p.read_text()), set(files)) & set(files) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, and modules importing themselves (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_core_has_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in trainhub: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_function_level_imports():
    a = ast.parse("def f():\n    from trainhub.b import x\n")
    b = ast.parse("from trainhub import a\n")
    modules = {"trainhub.a", "trainhub.b"}
    graph = {"trainhub.a": _imports(a, modules), "trainhub.b": _imports(b, modules)}
    assert cycles(graph) == [["trainhub.a", "trainhub.b"]]
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trainhub.b import x\n")
    assert _imports(guarded, modules) == set()

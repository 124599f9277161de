"""The packages stack one way: no package imports (even lazily, or for types only) one that
imports it back. A cycle names its packages, e.g. traces -> evaluation -> predictors -> traces."""

import ast
from pathlib import Path

import shadow_sweep

PACKAGE = Path(shadow_sweep.__file__).parent


def unit_of(module: str) -> str:
    """shadow_sweep.traces.collect -> traces; shadow_sweep.cache -> cache."""
    return module.split(".")[1]


def package_imports() -> dict[str, set[str]]:
    """{unit: the other units it imports}, over every import statement of every module."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        unit = parts[0]
        edges = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            edges.update(unit_of(n) for n in names if n.startswith("shadow_sweep.") and unit_of(n) != unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_find_cycle_sees_a_cycle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_packages_import_each_other_one_way():
    graph = package_imports()
    assert {"traces", "predictors", "evaluation", "sweep", "report"} <= set(graph)
    cycle = find_cycle(graph)
    assert not cycle, "packages import each other: " + " -> ".join(cycle)

"""worker/ modules import each other without a cycle (lazy imports inside functions count:
a cycle hidden by one is still a cycle)."""

from __future__ import annotations

from pathlib import Path

from tests.training.test_boundary import ROOT, imported_modules

WORKER = ROOT / "worker"


def worker_graph() -> dict[str, set[str]]:
    """worker module -> the worker modules it imports (``from worker import x`` names x)."""
    names = {"worker." + p.stem for p in WORKER.glob("*.py") if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name in names:
        path: Path = WORKER / (name.split(".")[1] + ".py")
        found = imported_modules(path)
        graph[name] = {m for m in found if m in names} | _from_package(path, names)
    return graph


def _from_package(path: Path, names: set[str]) -> set[str]:
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "worker":
            out |= {f"worker.{a.name}" for a in node.names if f"worker.{a.name}" in names}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_and_its_absence() -> None:
    """The checker itself can fail."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_worker_package_has_no_import_cycle() -> None:
    graph = worker_graph()
    assert "worker.datasets" in graph["worker.orchestrate"], "the probe must see the edges"
    assert "worker.execution" in graph["worker.tasks"]
    assert find_cycle(graph) is None, find_cycle(graph)

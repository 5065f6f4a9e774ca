"""Dependencies point one way, read by an import-graph tool from the source checkout.

``cli`` and ``benchmarks`` may import the workers; ``sim_worker`` and ``policy_worker``
import only ``broker`` and never each other; ``broker`` imports neither. No module imports
itself back through others (no cycles), counting imports inside functions and under
``TYPE_CHECKING``: a lazy import hides a cycle from Python, not from a reader.

grimp runs in a child under ``python -S``, with nothing on ``sys.path`` but the five
source roots and the directory grimp is installed in, so no editable-install finder
resolves a name: the graph is what a tool sees in a plain checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("broker", "sim_worker", "policy_worker", "cli", "benchmarks")

#: What each part may import, besides itself.
ALLOWED: dict[str, set[str]] = {
    "broker": set(),
    "sim_worker": {"broker"},
    "policy_worker": {"broker"},
    "benchmarks": {"broker", "sim_worker", "policy_worker"},
    "cli": {"broker", "sim_worker", "policy_worker", "benchmarks"},
}


@pytest.fixture(scope="module")
def edges() -> dict[str, list[str]]:
    site_dir = Path(grimp.__file__).resolve().parents[1]
    path = [str(REPO / root) for root in ROOTS] + [str(site_dir)]
    code = f"import sys; sys.path[:0] = {path!r}; import runpy; " + (
        "runpy.run_path(sys.argv[1], run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, str(REPO / "tests" / "import_graph_probe.py")],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    graph: dict[str, list[str]] = json.loads(out.stdout)
    return graph


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def test_the_tool_sees_every_part_and_the_imports_between_them(
    edges: dict[str, list[str]],
) -> None:
    parts = {_part(m) for m in edges if m != "arena_eval"}
    assert parts == set(ROOTS)
    # a known import across parts: the sim worker's service uses the broker's units
    assert "arena_eval.broker.units" in edges["arena_eval.sim_worker.service"]
    assert any(_part(t) == "sim_worker" for t in edges["arena_eval.cli.sim_cmd"])


def test_dependencies_point_one_way(edges: dict[str, list[str]]) -> None:
    wrong = [
        f"{source} imports {target}"
        for source, targets in edges.items()
        for target in targets
        if _part(source) in ALLOWED
        and _part(target) != _part(source)
        and _part(target) not in ALLOWED[_part(source)]
    ]
    assert wrong == []


def test_no_import_cycles(edges: dict[str, list[str]]) -> None:
    cycles = [sorted(c) for c in _strongly_connected(edges) if len(c) > 1]
    assert cycles == []


def _strongly_connected(edges: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion limits are not)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    found.append(component)
    return found

"""Structural rules of the codebase that a reader relies on, checked on the source tree.

* Stream commands (XADD, XREADGROUP, XACK, XDEL, XCLAIM, XAUTOCLAIM) are built only in
  ``broker/``: the wire protocol has one home, so the workers and the CLI cannot drift from it.
* No class is over ``MAX_CLASS_LINES`` lines or holds over ``MAX_METHODS`` methods unless its
  docstring gives the reason on a line that starts with ``Size:``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("broker", "sim_worker", "policy_worker", "cli", "benchmarks")
MAX_CLASS_LINES = 250
MAX_METHODS = 15
STREAM_COMMAND = re.compile(r"\b(xadd|xreadgroup|xack|xdel|xclaim|xautoclaim)\b", re.IGNORECASE)


def _sources(*roots: str) -> list[Path]:
    files = sorted(p for root in roots for p in (REPO / root).rglob("*.py"))
    assert files, roots
    return files


def test_stream_commands_are_built_only_in_broker() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in _sources("sim_worker", "policy_worker", "cli", "benchmarks")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if STREAM_COMMAND.search(line)
    ]
    assert found == []


def test_the_broker_does_build_them() -> None:
    """The check above looks at the right text: the broker's own modules match it."""
    assert any(STREAM_COMMAND.search(p.read_text()) for p in _sources("broker"))


def test_classes_are_small_or_say_why() -> None:
    big = []
    for path in _sources(*ROOTS):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            methods = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) for b in node.body)
            if lines <= MAX_CLASS_LINES and methods <= MAX_METHODS:
                continue
            doc = ast.get_docstring(node) or ""
            if not any(line.strip().startswith("Size:") for line in doc.splitlines()):
                where = f"{path.relative_to(REPO)}::{node.name}"
                big.append(f"{where} ({lines} lines, {methods} methods)")
    assert big == []

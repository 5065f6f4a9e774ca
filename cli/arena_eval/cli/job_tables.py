"""Per-task tables: the rows ``status``, ``results``, ``demo`` and ``compare`` print.

Why one module: a suite's per-task table (episodes, success with its 95 % Wilson interval,
mean length, steps/s) and its suite score line read the same in every command, and the
numbers come from the same dicts ``--json`` prints (``broker/per_task.py``,
``broker/compare.py``), so the CLI only formats them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from arena_eval.cli.common import esc
from arena_eval.cli.job_shared import num


def task_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """One row per task: success rate (successes/episodes), its 95 % Wilson interval, mean
    episode length, steps/s (fits 80 columns with Meta-World's longest task names)."""
    table = Table(box=None, header_style="bold")
    table.add_column("task", min_width=_task_width(rows), overflow="fold")
    for name in ("success", "95% CI", "length", "steps/s"):
        table.add_column(name, justify="right")
    for t in rows:
        cells = [
            t["task"],
            f"{num(t['success_rate'], '{:.2f}')} ({t['successes']}/{t['episodes']})",
            f"[{num(t['wilson_low'], '{:.2f}')}, {num(t['wilson_high'], '{:.2f}')}]",
            num(t["mean_length"], "{:.1f}"),
            num(t["steps_per_s"], "{:.1f}"),
        ]
        table.add_row(*(esc(c) for c in cells))
    return table


def suite_line(suite: Mapping[str, Any], name: str | None = None) -> str:
    """``suite score 0.87 (95% CI 0.80-0.93, mean over 10 tasks)``; markup-escaped."""
    label = f"{esc(name)} score" if name else "suite score"
    return (
        f"[bold]{label} {num(suite['score'], '{:.3f}')}[/] (95% CI {num(suite['low'], '{:.3f}')}"
        f"-{num(suite['high'], '{:.3f}')}, mean over {suite['tasks']} task(s))"
    )


def compare_table(rows: Sequence[Mapping[str, Any]], paired: bool) -> Table:
    """One row per task (then overall): both rates, B - A with its interval, p, flips."""
    table = Table(box=None, header_style="bold")
    table.add_column("task", min_width=_task_width(rows), overflow="fold")
    names = ["n", "A", "B", "B - A", "95% CI", "p"]
    if paired:
        names += ["A only", "B only"]
    for name in names:
        table.add_column(name, justify="right")
    for t in rows:
        n = str(t["pairs"]) if paired else f"{t['n_a']}/{t['n_b']}"
        cells = [
            n,
            num(t["rate_a"], "{:.2f}"),
            num(t["rate_b"], "{:.2f}"),
            num(t["diff"], "{:+.2f}"),
            f"[{num(t['diff_low'], '{:+.2f}')}, {num(t['diff_high'], '{:+.2f}')}]",
            num(t["p_value"], "{:.3g}"),
        ]
        if paired:
            cells += [str(t["a_only"]), str(t["b_only"])]
        table.add_row(esc(t["task"]), *(esc(c) for c in cells))
    return table


def _task_width(rows: Sequence[Mapping[str, Any]]) -> int:
    """Room for the longest task name (up to 40), so a narrow terminal wraps other cells
    rather than cutting task names to ``metaworld/drawer-open-…``."""
    return min(40, max((len(str(t["task"])) for t in rows), default=4))

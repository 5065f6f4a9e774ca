"""``arena-eval compare JOB_A JOB_B``: job B against job A, per task and overall.

Parses and hands off to ``status.compare_report`` (``broker/compare.py`` has the tests and
why they are the right ones). Jobs with the same tasks and seed pair episode for episode and
get the exact McNemar test; others fall back to the two-proportion test, and the output says
so. ``--json`` prints the report dict: ``{"job_a", "job_b", "paired", "why_unpaired",
"common_tasks", "only_a", "only_b", "tasks": [row], "overall": row}``, each row with the
columns ``broker.compare.COMPARE_COLUMNS``.
"""

from __future__ import annotations

from typing import Any

import typer

from arena_eval.broker import status
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, console, esc, print_json
from arena_eval.cli.job_shared import Warnings, num, open_redis
from arena_eval.cli.job_tables import compare_table


def compare_cmd(
    job_a: str = typer.Argument(..., help="The baseline job (A)."),
    job_b: str = typer.Argument(..., help="The job compared with it (B); differences are B - A."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Compare two jobs' success per task: a paired exact McNemar test on the same seeds."""
    r, keys = open_redis(redis_url)
    warnings = Warnings()
    report = status.compare_report(r, keys, job_a, job_b, warnings.pending)
    warnings.flush()
    if json_out:
        print_json(report)
        return
    print_comparison(report)


def print_comparison(report: dict[str, Any]) -> None:
    """The per-task table, the overall row, and a line that says which test was used."""
    a, b = report["job_a"], report["job_b"]
    console.print(
        f"A = {esc(a['job_id'])} (pool {esc(a['pool'])}, {esc(a['state'])})   "
        f"B = {esc(b['job_id'])} (pool {esc(b['pool'])}, {esc(b['state'])})",
        highlight=False,
    )
    paired = report["paired"]
    console.print(compare_table([*report["tasks"], report["overall"]], paired))
    o = report["overall"]
    if paired:
        console.print(
            f"paired by (task, episode) on the same seeds: {o['pairs']} pairs, "
            f"{o['a_only']} solved only by A, {o['b_only']} only by B; "
            f"exact McNemar p = {num(o['p_value'], '{:.4g}')}",
            highlight=False,
        )
    else:
        console.print(
            f"[yellow]not paired[/]: {esc(report['why_unpaired'])}; two-proportion z-test "
            f"p = {num(o['p_value'], '{:.4g}')} (far less sensitive than a paired test: "
            "submit both with the same tasks and --seed, e.g. `submit --pool A --pool B`)",
            highlight=False,
        )
    for side, names in (("A", report["only_a"]), ("B", report["only_b"])):
        if names:
            console.print(f"only in {side} (not compared): {esc(', '.join(names))}")

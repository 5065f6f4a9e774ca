"""``arena-eval submit | status | results``: one job, from submit to its results.

Stable output for scripts is documented in ``cli/job_cmd.py``.
"""

from __future__ import annotations

import csv
import sys
import time
from typing import Any

import redis
import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from arena_eval.broker import jobs, status
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.results import RESULT_COLUMNS, episode_rows
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, console, esc, print_json
from arena_eval.cli.job_shared import (
    EXIT_INTERRUPTED,
    POLL_S,
    Warnings,
    ended,
    err,
    num,
    open_redis,
    when,
)


# -- submit -------------------------------------------------------------------------------
def submit_cmd(
    task: str = typer.Option(..., "--task", help="e.g. metaworld/door-open-v3, CartPole-v1."),
    pool: str = typer.Option(..., "--pool", help="Model pool that serves the policy."),
    episodes: int = typer.Option(..., "--episodes", min=1, help="Episodes to run."),
    num_envs: int | None = typer.Option(
        None, "--num-envs", min=1, help="Env slots per sim worker (default: the worker's)."
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", min=1, help="Truncate episodes here (default: the task's limit)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Episode i is reset with seed SEED+i."),
    shard_size: int | None = typer.Option(
        None, "--shard-size", min=1, help="Episodes per work unit (default: 2 x env slots)."
    ),
    camera: str | None = typer.Option(None, "--camera", help="Add this camera's RGB frames."),
    image_size: int = typer.Option(224, "--image-size", min=1, help="Camera frame size (px)."),
    wait: bool = typer.Option(
        False,
        "--wait",
        help="Show progress until the job ends; exit 1 unless it completes. Ctrl-C asks "
        "whether to cancel the job (without a terminal it keeps running); exit 130.",
    ),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Submit an evaluation job; print its id."""
    r, keys = open_redis(redis_url)
    spec = JobSpec(
        task=task, pool=pool, episodes=episodes, num_envs=num_envs, max_steps=max_steps,
        seed=seed, shard_size=shard_size, camera=camera, image_size=image_size,
    )  # fmt: skip
    job_id = jobs.submit(r, keys, spec)
    if not wait:
        if json_out:
            print_json({"job_id": job_id})
        else:
            typer.echo(job_id)
            hint = status.job_status(r, keys, job_id)["hint"]
            if hint:
                err.print(f"note: {esc(hint)}")
        return
    try:
        final = wait_with_progress(r, keys, job_id, quiet=json_out)
    except KeyboardInterrupt:
        offer_cancel(r, keys, job_id)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        print_json(final)
    else:
        _print_status(final)
    if final["state"] != JobState.COMPLETED.value:
        raise typer.Exit(1)


def offer_cancel(r: redis.Redis, keys: Keys, job_id: str) -> bool:
    """After Ctrl-C while waiting on a job: ask (on a terminal) whether to cancel it, do it,
    and say what happened. Without a terminal nothing is cancelled. True if cancelled."""
    keep = f"job {esc(job_id)} keeps running; cancel it with `arena-eval cancel {esc(job_id)}`"
    if not sys.stdin.isatty():
        err.print(f"interrupted: {keep}")
        return False
    try:
        yes = typer.confirm(f"\ninterrupted: cancel job {job_id}?", default=False, err=True)
    except (typer.Abort, KeyboardInterrupt, EOFError):
        yes = False
    if not yes:
        err.print(keep)
        return False
    outcome = jobs.request_cancel(r, keys, job_id)
    if outcome.cancelled_now:
        err.print(f"job {esc(job_id)} cancelled")
        return True
    err.print(f"job {esc(job_id)} had already ended: {outcome.job.state.value}")
    return False


def wait_with_progress(r: redis.Redis, keys: Keys, job_id: str, *, quiet: bool) -> dict[str, Any]:
    """Poll the job until it is terminal, with a live progress bar unless ``quiet``."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
    )
    warnings = Warnings(progress.console)
    with progress:
        bar = progress.add_task(esc(job_id), total=None, info="")
        while True:
            s = status.job_status(r, keys, job_id, warnings.pending)
            warnings.flush()
            info = f"{s['state']}  success {num(s['success_rate'], '{:.2f}')}"
            info += f"  {num(s['steps_per_s'], '{:.0f}')} steps/s"
            if s["reason"] or s["hint"]:
                info += f"  ({s['reason'] or s['hint']})"
            progress.update(bar, total=s["total"], completed=s["episodes_done"], info=esc(info))
            if ended(s["state"]):
                return s
            time.sleep(POLL_S)


# -- status -------------------------------------------------------------------------------
def status_cmd(
    job_id: str | None = typer.Argument(None, help="Job id (default: the latest job)."),
    json_out: bool = JSON_OPTION,
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until the job ends."),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Show a job's state, progress, success rate and latencies."""
    r, keys = open_redis(redis_url)
    warnings = Warnings()
    job_id = status.resolve_job_id(r, keys, job_id)
    s = status.job_status(r, keys, job_id, warnings.pending)
    warnings.flush()
    if json_out:
        print_json(s)
        return
    if not watch:
        _print_status(s)
        return
    with Live(_status_view(s), console=console, auto_refresh=False) as live:
        while not ended(s["state"]):
            time.sleep(POLL_S * 2)
            s = status.job_status(r, keys, job_id, warnings.pending)
            warnings.flush()
            live.update(_status_view(s), refresh=True)


def _print_status(s: dict[str, Any]) -> None:
    console.print(_status_view(s))


def _status_view(s: dict[str, Any]) -> Group:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", justify="right")
    grid.add_column()
    state = s["state"] + (f" ({s['reason']})" if s["reason"] else "")
    spec = s["spec"]
    ms = "{:.2f}"
    workers = ", ".join(f"{w['worker_id']} ({w['last_seen_s']:.0f}s ago)" for w in s["workers"])
    parts = ("queue", "decode", "infer", "encode")
    policy_side = "  ".join(f"{p} {num(s[f'mean_{p}_ms'], ms)}" for p in parts)
    policy_side += f" ms  batch rows {num(s['mean_batch_rows'], '{:.1f}')}"
    task = f"{spec.get('task', '-')}  pool {spec.get('pool', '-')}  seed {spec.get('seed', '-')}"
    rows = [
        ("job", s["job_id"]),
        ("task", task),
        ("state", state),
        ("episodes", f"{s['episodes_done']}/{s['total']}"),
        ("success", f"{num(s['success_rate'])}  95% CI [{num(s['wilson_low'])}, "
                    f"{num(s['wilson_high'])}]  ({s['successes']}/{s['episodes_done']})"),
        ("length", f"mean {num(s['mean_length'], '{:.1f}')} steps"),
        ("steps/s", num(s["steps_per_s"], "{:.1f}")),
        ("round trip", f"p50 {num(s['round_trip_p50_ms'], ms)} ms  "
                       f"p99 {num(s['round_trip_p99_ms'], ms)} ms  ({s['requests']} requests)"),
        ("policy side", policy_side),
        ("workers", workers or "-"),
        ("created", f"{when(s['created'])}  started {when(s['started'])}  "
                    f"finished {when(s['finished'])}"),
    ]  # fmt: skip
    for name, value in rows:
        grid.add_row(name, esc(value))
    if s["hint"]:
        grid.add_row("hint", f"[yellow]{esc(s['hint'])}[/]")
    return Group(grid)


# -- results ------------------------------------------------------------------------------
def results_cmd(
    job_id: str | None = typer.Argument(None, help="Job id (default: the latest job)."),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        help="table (for people), json or csv (stable columns for scripts; see the docs).",
    ),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Print a job's metrics and one row per finished episode (json/csv: stable columns)."""
    if fmt not in ("table", "json", "csv"):
        raise typer.BadParameter(f"--format must be table, json or csv, not {fmt!r}")
    r, keys = open_redis(redis_url)
    warnings = Warnings()
    report = status.results_report(r, keys, job_id, warnings.pending)
    warnings.flush()
    if fmt == "json":
        print_json(report)
        return
    if fmt == "csv":
        header, rows = episode_rows(report["episodes"])
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        return
    print_results(report)


def print_results(report: dict[str, Any]) -> None:
    """One row per episode, then the task-metric means, then the headline metrics."""
    _header, rows = episode_rows(report["episodes"])
    shown = ("index", "seed", "success", "return", "length", "wall_s", "worker")
    idx = [RESULT_COLUMNS.index(c) for c in shown]
    table = Table(*shown, box=None, header_style="bold")  # every column: --format csv/json
    for row in rows:
        cells = [_cell(row[i]) for i in idx]
        cells[-1] = cells[-1][-14:]
        table.add_row(*(esc(c) for c in cells))
    console.print(table)
    m = report["metrics"]
    means = "  ".join(f"{k}={num(v, '{:.3g}')}" for k, v in m["metric_means"].items())
    if means:
        console.print(f"task metrics (episode means): {esc(means)}", highlight=False, style="dim")
    console.print(
        f"[bold]{esc(report['job_id'])}[/] {esc(report['state'])}: "
        f"{m['num_episodes']} episodes, "
        f"[bold]success_rate {num(m['success_rate'])}[/] (95% CI {num(m['wilson_low'])}-"
        f"{num(m['wilson_high'])}), mean length {num(m['mean_length'], '{:.1f}')}, "
        f"mean return {num(m['mean_return'], '{:.2f}')}",
        highlight=False,
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1e6 else when(value)
    return "-" if value is None else str(value)

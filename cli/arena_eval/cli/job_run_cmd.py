"""``arena-eval submit | status | results``: one job, from submit to its results.

Stable output for scripts is documented in ``cli/job_cmd.py``.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
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
from arena_eval.broker.per_task import TASK_COLUMNS
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
from arena_eval.cli.job_tables import suite_line, task_table
from arena_eval.sim_worker.envs.suites import SUITES, suite_tasks


# -- submit -------------------------------------------------------------------------------
def submit_cmd(
    task: list[str] = typer.Option(
        [],
        "--task",
        help="e.g. metaworld/door-open-v3, CartPole-v1; repeat for a suite of your own.",
    ),
    suite: str | None = typer.Option(
        None, "--suite", help=f"A benchmark suite instead of --task: {', '.join(SUITES)}."
    ),
    pool: list[str] = typer.Option(
        ...,
        "--pool",
        help="Model pool that serves the policy; repeat to run the same episodes (tasks and "
        "seeds) on several pools, one job each (e.g. two checkpoints, then `compare`).",
    ),
    episodes: int = typer.Option(..., "--episodes", min=1, help="Episodes per task."),
    num_envs: int | None = typer.Option(
        None, "--num-envs", min=1, help="Env slots per sim worker (default: the worker's)."
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", min=1, help="Truncate episodes here (default: the task's limit)."
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Episode i of each task is reset with seed SEED+i."
    ),
    shard_size: int | None = typer.Option(
        None, "--shard-size", min=1, help="Episodes per work unit (default: 2 x env slots)."
    ),
    camera: str | None = typer.Option(None, "--camera", help="Add this camera's RGB frames."),
    image_size: int = typer.Option(224, "--image-size", min=1, help="Camera frame size (px)."),
    record: str | None = typer.Option(
        None,
        "--record",
        help="Record episodes (observations, actions, rewards, success) in LeRobot's layout: "
        "all, failures, or N (the first N of each task). See docs/recording.md.",
    ),
    record_dir: str | None = typer.Option(
        None,
        "--record-dir",
        help="Where recordings go: a directory every sim worker can write, or an fsspec URL "
        "(s3://..., gs://...). With several --pool, one subdirectory per pool.",
    ),
    video: int = typer.Option(
        0,
        "--video",
        min=0,
        help="Write an mp4 of the first N episodes of each task (needs "
        "camera frames: --camera, or a pixel task); they are recorded too.",
    ),
    wait: bool = typer.Option(
        False,
        "--wait",
        help="Show progress until the job(s) end; exit 1 unless all complete. Ctrl-C asks "
        "whether to cancel them (without a terminal they keep running); exit 130.",
    ),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Submit an evaluation job (one per --pool); print its id (one line per job)."""
    tasks = _tasks(task, suite)
    specs = [
        JobSpec(
            task=tasks[0], tasks=tasks, suite=suite, pool=p, episodes=episodes,
            num_envs=num_envs, max_steps=max_steps, seed=seed, shard_size=shard_size,
            camera=camera, image_size=image_size, record=record, video=video,
            record_dir=_record_dir(record_dir, p, several=len(pool) > 1),
        )
        for p in pool
    ]  # fmt: skip
    r, keys = open_redis(redis_url)
    job_ids = [jobs.submit(r, keys, spec) for spec in specs]
    if not wait:
        if json_out:
            print_json({"job_id": job_ids[0], "job_ids": job_ids})
        else:
            for job_id in job_ids:
                typer.echo(job_id)
            for job_id in job_ids:
                hint = status.job_status(r, keys, job_id, tasks=False)["hint"]
                if hint:
                    err.print(f"note: {esc(job_id)}: {esc(hint)}")
        return
    try:
        finals = wait_with_progress(r, keys, job_ids, quiet=json_out)
    except KeyboardInterrupt:
        for job_id in job_ids:
            offer_cancel(r, keys, job_id)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        print_json(finals[0] if len(finals) == 1 else {"jobs": finals})
    else:
        for final in finals:
            _print_status(final)
    if any(final["state"] != JobState.COMPLETED.value for final in finals):
        raise typer.Exit(1)


def _record_dir(record_dir: str | None, pool: str, *, several: bool) -> str | None:
    """``--record-dir`` as the sim workers will see it: a local path made absolute (they do
    not share the CLI's working directory), an fsspec URL unchanged; ``DIR/POOL`` when one
    submit makes a job per pool, so their episode indices do not collide."""
    if not record_dir:
        return None
    base = record_dir if "://" in record_dir else str(Path(record_dir).expanduser().resolve())
    return f"{base.rstrip('/')}/{pool}" if several else base


def _tasks(task: list[str], suite: str | None) -> tuple[str, ...]:
    """The job's tasks from ``--task`` (repeated) or ``--suite`` (exactly one of them)."""
    if suite and task:
        raise typer.BadParameter("give --suite or --task, not both")
    if suite:
        return suite_tasks(suite)
    if not task:
        raise typer.BadParameter(
            f"give --task TASK (repeat for several) or --suite ({', '.join(SUITES)})"
        )
    return tuple(task)


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


def wait_with_progress(
    r: redis.Redis, keys: Keys, job_ids: str | Sequence[str], *, quiet: bool
) -> list[dict[str, Any]]:
    """Poll the jobs until all are terminal, with a live progress bar each unless ``quiet``;
    return each one's final status (with its per-task rows), in the order given."""
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
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
        bars = {job_id: progress.add_task(esc(job_id), total=None, info="") for job_id in ids}
        running = set(ids)
        while running:
            for job_id in ids:
                if job_id not in running:
                    continue
                s = status.job_status(r, keys, job_id, warnings.pending, tasks=False)
                warnings.flush()
                info = f"{s['state']}  success {num(s['success_rate'], '{:.2f}')}"
                info += f"  {num(s['steps_per_s'], '{:.0f}')} steps/s"
                if s["reason"] or s["hint"]:
                    info += f"  ({s['reason'] or s['hint']})"
                progress.update(
                    bars[job_id], total=s["total"], completed=s["episodes_done"], info=esc(info)
                )
                if ended(s["state"]):
                    running.discard(job_id)
            if running:
                time.sleep(POLL_S)
    finals = [status.job_status(r, keys, job_id, warnings.pending) for job_id in ids]
    warnings.flush()
    return finals


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
    grid.add_column(overflow="fold")  # a long path (--record-dir) wraps, never cut short
    state = s["state"] + (f" ({s['reason']})" if s["reason"] else "")
    spec = s["spec"]
    ms = "{:.2f}"
    workers = ", ".join(f"{w['worker_id']} ({w['last_seen_s']:.0f}s ago)" for w in s["workers"])
    parts = ("queue", "decode", "infer", "encode")
    policy_side = "  ".join(f"{p} {num(s[f'mean_{p}_ms'], ms)}" for p in parts)
    policy_side += f" ms  batch rows {num(s['mean_batch_rows'], '{:.1f}')}"
    task = f"{_task_label(spec)}  pool {spec.get('pool', '-')}  seed {spec.get('seed', '-')}"
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
    if spec.get("record_dir"):
        rows.append(("recording", _recording_label(spec)))
    for name, value in rows:
        grid.add_row(name, esc(value))
    if s["hint"]:
        grid.add_row("hint", f"[yellow]{esc(s['hint'])}[/]")
    if not s.get("tasks"):
        return Group(grid)
    return Group(grid, "", task_table(s["tasks"]), suite_line(s["suite"], spec.get("suite")))


def _recording_label(spec: dict[str, Any]) -> str:
    """What the job records and where (``docs/recording.md``)."""
    what = [f"record {spec['record']}"] if spec.get("record") else []
    if spec.get("video"):
        what.append(f"video {spec['video']} per task")
    return f"{', '.join(what)} -> {spec['record_dir']}"


def _task_label(spec: dict[str, Any]) -> str:
    """The task, or for a suite its name (if any) and how many tasks it has."""
    tasks = spec.get("tasks") or [spec.get("task", "-")]
    if len(tasks) == 1:
        return str(tasks[0])
    return f"{spec.get('suite') or 'suite'} ({len(tasks)} tasks)"


# -- results ------------------------------------------------------------------------------
def results_cmd(
    job_id: str | None = typer.Argument(None, help="Job id (default: the latest job)."),
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        help="table (for people), json or csv (stable columns for scripts; see the docs).",
    ),
    per_task: bool = typer.Option(
        False, "--tasks", help="csv: one row per task instead of one per episode."
    ),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Print a job's metrics, one row per task and one per finished episode (json/csv:
    stable columns)."""
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
        if per_task:
            header = list(TASK_COLUMNS)
            rows = [[t[c] for c in TASK_COLUMNS] for t in report["tasks"]]
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        return
    print_results(report)


def print_results(report: dict[str, Any], *, episodes: bool = True) -> None:
    """One row per episode (unless not ``episodes``), the task-metric means, one row per
    task with the suite score, then the headline metrics."""
    _header, rows = episode_rows(report["episodes"] if episodes else [])
    shown = ("index", "task", "seed", "success", "return", "length", "wall_s", "worker")
    idx = [RESULT_COLUMNS.index(c) for c in shown]
    table = Table(*shown, box=None, header_style="bold")  # every column: --format csv/json
    for row in rows:
        cells = [_cell(row[i]) for i in idx]
        cells[-1] = cells[-1][-14:]
        table.add_row(*(esc(c) for c in cells))
    if rows:
        console.print(table)
    m = report["metrics"]
    means = "  ".join(f"{k}={num(v, '{:.3g}')}" for k, v in m["metric_means"].items())
    if means:
        console.print(f"task metrics (episode means): {esc(means)}", highlight=False, style="dim")
    console.print(task_table(report["tasks"]))
    console.print(suite_line(report["suite"], report["spec"].get("suite")), highlight=False)
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

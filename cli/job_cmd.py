"""``arena-eval submit | status | results | jobs | cancel | workers``: evaluation jobs.

Each command parses its options, calls one function of ``arena_eval.broker``
(``jobs`` to change things, ``status`` to read them) and renders the result
with rich; ``--json`` prints the same dict the table is made from, so scripts
and humans see the same numbers. Every string that comes from the user or
from Redis (ids, task and pool names, reasons, cells) is escaped before rich
sees it, so ``[red]`` in a reason prints as ``[red]``. Fields someone wrote
by hand that do not parse are named in ``warning:`` lines on stderr; the
command carries on without them.

Stable output for scripts:

* ``submit`` prints only the job id on stdout (``--json``: ``{"job_id": ...}``);
  hints go to stderr. Ctrl-C on ``submit --wait`` asks (on a terminal) whether
  to cancel the job; without a terminal the job keeps running. Exit 130 either way.
* ``results --format json``: ``{"job_id", "state", "reason", "spec", "metrics":
  {num_episodes, successes, success_rate, wilson_low, wilson_high, mean_length,
  mean_return, metric_means}, "episodes": [one result dict per episode, by
  index]}`` (the result dict is documented in ``broker/results.py``).
* ``results --format csv``: one row per episode, sorted by index; columns
  ``index,seed,success,return,length,wall_s,worker,finished_at`` in that order,
  then ``m.<metric>`` per task metric, sorted by name. ``finished_at`` is ISO
  8601 in UTC, e.g. ``2026-12-01T10:17:01Z`` (the JSON keeps unix seconds).
* ``cancel`` exits 0 when it cancelled the job and also when the job had already
  ended (the message says in which state); 1 when there is no such job.
* ``jobs prune --json``: ``{"dry_run", "older_than_s", "pruned": [{"job_id",
  "state", "ended"}]}``.
"""

from __future__ import annotations

import csv
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from arena_eval.broker import jobs, status
from arena_eval.broker.jobs import TERMINAL, JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.results import RESULT_COLUMNS, episode_rows, iso_utc
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, cli_client, console, print_json

err = Console(stderr=True, highlight=False)
POLL_S = 0.5
#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
_ENDED = frozenset(s.value for s in TERMINAL)
#: Terminal width from which ``jobs`` adds the created column.
WIDE_COLUMNS = 100


def _open(redis_url: str | None) -> tuple[redis.Redis, Keys]:
    r, settings = cli_client(redis_url)
    return r, Keys(settings.prefix)


def _f(value: Any, fmt: str = "{:.3f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def _when(ts: float | None) -> str:
    return "-" if not ts else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _ended(state: str) -> bool:
    return state in _ENDED


class _Warnings:
    """Prints each warning about a bad field once, on stderr."""

    def __init__(self, out: Console = err) -> None:
        self.out = out
        self.seen: set[str] = set()
        self.pending: list[str] = []

    def flush(self) -> None:
        for line in self.pending:
            if line not in self.seen:
                self.seen.add(line)
                self.out.print(f"[yellow]warning:[/] {escape(line)}")
        self.pending.clear()


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
    r, keys = _open(redis_url)
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
                err.print(f"note: {escape(hint)}")
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
    keep = (
        f"job {escape(job_id)} keeps running; cancel it with `arena-eval cancel {escape(job_id)}`"
    )
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
        err.print(f"job {escape(job_id)} cancelled")
        return True
    err.print(f"job {escape(job_id)} had already ended: {outcome.job.state.value}")
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
    warnings = _Warnings(progress.console)
    with progress:
        bar = progress.add_task(escape(job_id), total=None, info="")
        while True:
            s = status.job_status(r, keys, job_id, warnings.pending)
            warnings.flush()
            info = f"{s['state']}  success {_f(s['success_rate'], '{:.2f}')}"
            info += f"  {_f(s['steps_per_s'], '{:.0f}')} steps/s"
            if s["reason"] or s["hint"]:
                info += f"  ({s['reason'] or s['hint']})"
            progress.update(bar, total=s["total"], completed=s["episodes_done"], info=escape(info))
            if _ended(s["state"]):
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
    r, keys = _open(redis_url)
    warnings = _Warnings()
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
        while not _ended(s["state"]):
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
    policy_side = "  ".join(f"{p} {_f(s[f'mean_{p}_ms'], ms)}" for p in parts)
    policy_side += f" ms  batch rows {_f(s['mean_batch_rows'], '{:.1f}')}"
    task = f"{spec.get('task', '-')}  pool {spec.get('pool', '-')}  seed {spec.get('seed', '-')}"
    rows = [
        ("job", s["job_id"]),
        ("task", task),
        ("state", state),
        ("episodes", f"{s['episodes_done']}/{s['total']}"),
        ("success", f"{_f(s['success_rate'])}  95% CI [{_f(s['wilson_low'])}, "
                    f"{_f(s['wilson_high'])}]  ({s['successes']}/{s['episodes_done']})"),
        ("length", f"mean {_f(s['mean_length'], '{:.1f}')} steps"),
        ("steps/s", _f(s["steps_per_s"], "{:.1f}")),
        ("round trip", f"p50 {_f(s['round_trip_p50_ms'], ms)} ms  "
                       f"p99 {_f(s['round_trip_p99_ms'], ms)} ms  ({s['requests']} requests)"),
        ("policy side", policy_side),
        ("workers", workers or "-"),
        ("created", f"{_when(s['created'])}  started {_when(s['started'])}  "
                    f"finished {_when(s['finished'])}"),
    ]  # fmt: skip
    for name, value in rows:
        grid.add_row(name, escape(value))
    if s["hint"]:
        grid.add_row("hint", f"[yellow]{escape(s['hint'])}[/]")
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
    r, keys = _open(redis_url)
    warnings = _Warnings()
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
        table.add_row(*(escape(c) for c in cells))
    console.print(table)
    m = report["metrics"]
    means = "  ".join(f"{k}={_f(v, '{:.3g}')}" for k, v in m["metric_means"].items())
    if means:
        console.print(
            f"task metrics (episode means): {escape(means)}", highlight=False, style="dim"
        )
    console.print(
        f"[bold]{escape(report['job_id'])}[/] {escape(report['state'])}: "
        f"{m['num_episodes']} episodes, "
        f"[bold]success_rate {_f(m['success_rate'])}[/] (95% CI {_f(m['wilson_low'])}-"
        f"{_f(m['wilson_high'])}), mean length {_f(m['mean_length'], '{:.1f}')}, "
        f"mean return {_f(m['mean_return'], '{:.2f}')}",
        highlight=False,
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1e6 else _when(value)
    return "-" if value is None else str(value)


# -- jobs / cancel / workers ----------------------------------------------------------------
jobs_app = typer.Typer(
    help="List jobs, newest first; `jobs prune` deletes old ended ones.",
    no_args_is_help=False,
)


@jobs_app.callback(invoke_without_command=True)
def jobs_cmd(
    ctx: typer.Context,
    limit: int = typer.Option(50, "--limit", min=1, help="Show the newest N jobs."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """List jobs, newest first (`jobs prune --help`: delete old ended jobs)."""
    if ctx.invoked_subcommand is not None:
        return
    r, keys = _open(redis_url)
    warnings = _Warnings()
    rows = status.jobs_report(r, keys, limit, warnings.pending)
    warnings.flush()
    if json_out:
        print_json({"jobs": rows})
        return
    if not rows:
        console.print("no jobs yet: `arena-eval submit --task TASK --pool POOL --episodes N`")
        return
    # ids never wrap (a cut id is useless); task and pool fold; at under 100 columns the
    # created column goes (the id starts with the UTC submit time)
    wide = console.width >= WIDE_COLUMNS
    table = Table(
        Column("job", no_wrap=True, min_width=max(len(j["job_id"]) for j in rows)),
        Column("task", overflow="fold"),
        Column("pool", overflow="fold"),
        Column("state", no_wrap=True),
        Column("done", no_wrap=True),
        Column("success", no_wrap=True),
        *([Column("created", no_wrap=True)] if wide else []),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for j in rows:
        cells = [
            j["job_id"], _text(j["task"]), _text(j["pool"]), j["state"],
            f"{j['episodes_done']}/{j['total']}", _f(j["success_rate"]),
        ]  # fmt: skip
        if wide:
            cells.append(_when(j["created"])[5:16] if j["created"] else "-")  # MM-DD HH:MM
        table.add_row(*(escape(c) for c in cells))
    console.print(table)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` -> seconds."""
    match = _DURATION.match(value)
    if not match:
        raise typer.BadParameter(f"{value!r} is not a duration: use e.g. 7d, 12h, 30m, 45s, 2w")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@jobs_app.command("prune")
def prune_cmd(
    older_than: str = typer.Option(
        ...,
        "--older-than",
        help="Delete jobs that ended longer ago than this: e.g. 7d, 12h, 30m, 45s, 2w.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Only list the jobs that would be deleted."
    ),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Delete ended jobs' keys (record, results, stats, workers); never queued or running ones."""
    older_than_s = parse_duration(older_than)
    r, keys = _open(redis_url)
    pruned = jobs.prune(r, keys, older_than_s, dry_run=dry_run)
    if json_out:
        print_json({
            "dry_run": dry_run,
            "older_than_s": older_than_s,
            "pruned": [{"job_id": p.job_id, "state": p.state, "ended": p.ended} for p in pruned],
        })  # fmt: skip
        return
    verb = "would prune" if dry_run else "pruned"
    for p in pruned:
        console.print(
            f"{verb} {escape(p.job_id)} ({escape(p.state or 'record gone')}, "
            f"ended {iso_utc(p.ended)})",
            highlight=False,
        )
    console.print(f"{verb} {len(pruned)} job(s) that ended more than {escape(older_than)} ago")


def cancel_cmd(
    job_id: str = typer.Argument(..., help="Job id."),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Cancel a job: workers drop its units within a few seconds.

    Exit status 0 when it was cancelled and also when it had already ended
    (the message says how); 1 when there is no such job.
    """
    r, keys = _open(redis_url)
    outcome = jobs.request_cancel(r, keys, job_id)
    if outcome.cancelled_now:
        console.print(f"job {escape(job_id)} cancelled", highlight=False)
    else:
        console.print(
            f"job {escape(job_id)} had already ended: {outcome.job.state.value}; nothing to cancel",
            highlight=False,
        )


def workers_cmd(
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """List live sim workers and the policy workers of every pool."""
    r, keys = _open(redis_url)
    report = status.workers_report(r, keys)
    if json_out:
        print_json(report)
        return
    sims = Table("sim worker", "state", "job", "unit", "episodes", "heartbeat", title="sim workers")
    for w in report["sim_workers"]:
        done = f"{w.get('episodes_done', 0)}/{w['unit_episodes']}" if "unit_episodes" in w else "-"
        cells = (
            w["worker_id"], str(w.get("state")), str(w.get("job", "-")), str(w.get("unit", "-")),
            done, f"{w['heartbeat_age_s']:.1f}s",
        )  # fmt: skip
        sims.add_row(*(escape(c) for c in cells))
    console.print(sims if report["sim_workers"] else "no live sim workers: `arena-eval sim serve`")
    pools = Table("pool", "policy worker", "state", "requests", "heartbeat", title="policy workers")
    for p in report["pools"]:
        for w in p["workers"]:
            row = (
                p["pool"], w["worker_id"], str(w["state"]), str(w["requests"]),
                f"{w['heartbeat_age_s']:.1f}s",
            )  # fmt: skip
            pools.add_row(*(escape(c) for c in row))
    if pools.row_count:
        console.print(pools)
    else:
        console.print("no live policy workers: `arena-eval policy serve --pool NAME --policy ...`")


#: Top-level commands this module adds to the root app (see ``cli/app.py``).
COMMANDS: dict[str, Callable[..., None]] = {
    "submit": submit_cmd,
    "status": status_cmd,
    "results": results_cmd,
    "cancel": cancel_cmd,
    "workers": workers_cmd,
}
#: Command groups this module adds to the root app with ``add_typer``.
GROUPS: dict[str, typer.Typer] = {"jobs": jobs_app}

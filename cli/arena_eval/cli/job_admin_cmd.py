"""``arena-eval jobs [prune] | cancel | workers``: many jobs and the workers serving them.

Stable output for scripts is documented in ``cli/job_cmd.py``.
"""

from __future__ import annotations

import re
from typing import Any

import typer
from rich import box
from rich.table import Column, Table

from arena_eval.broker import fleet, jobs, status
from arena_eval.broker.fields import as_text
from arena_eval.broker.results import iso_utc
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, console, esc, print_json
from arena_eval.cli.job_shared import Warnings, num, open_redis, when

#: Terminal width from which ``jobs`` adds the created column.
WIDE_COLUMNS = 100

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
    r, keys = open_redis(redis_url)
    warnings = Warnings()
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
            j["job_id"], as_text(j["task"], "-"), as_text(j["pool"], "-"), j["state"],
            f"{j['episodes_done']}/{j['total']}", num(j["success_rate"]),
        ]  # fmt: skip
        if wide:
            cells.append(when(j["created"])[5:16] if j["created"] else "-")  # MM-DD HH:MM
        table.add_row(*(esc(c) for c in cells))
    console.print(table)


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
    r, keys = open_redis(redis_url)
    report = jobs.prune(r, keys, older_than_s, dry_run=dry_run)
    pruned = report.pruned
    if json_out:
        print_json({
            "dry_run": dry_run,
            "older_than_s": older_than_s,
            "pruned": [{"job_id": p.job_id, "state": p.state, "ended": p.ended} for p in pruned],
            "junk": report.junk,
        })  # fmt: skip
        return
    verb = "would prune" if dry_run else "pruned"
    for p in pruned:
        console.print(
            f"{verb} {esc(p.job_id)} ({esc(p.state or 'record gone')}, ended {iso_utc(p.ended)})",
            highlight=False,
        )
    for member in report.junk:
        console.print(
            f"{'would remove' if dry_run else 'removed'} {esc(repr(member))} from the jobs set: "
            "not a job id (written by hand?)",
            highlight=False,
        )
    console.print(f"{verb} {len(pruned)} job(s) that ended more than {esc(older_than)} ago")


def cancel_cmd(
    job_id: str = typer.Argument(..., help="Job id."),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Cancel a job: workers drop its units within a few seconds.

    Exit status 0 when it was cancelled and also when it had already ended
    (the message says how); 1 when there is no such job.
    """
    r, keys = open_redis(redis_url)
    outcome = jobs.request_cancel(r, keys, job_id)
    if outcome.cancelled_now:
        console.print(f"job {esc(job_id)} cancelled", highlight=False)
    else:
        console.print(
            f"job {esc(job_id)} had already ended: {outcome.job.state.value}; nothing to cancel",
            highlight=False,
        )


def workers_cmd(
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """List live sim workers and the policy workers of every pool."""
    r, keys = open_redis(redis_url)
    report = status.workers_report(r, keys)
    report["gateways"] = [g.to_dict() for g in fleet.live_gateways(r, keys)]
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
        sims.add_row(*(esc(c) for c in cells))
    console.print(sims if report["sim_workers"] else "no live sim workers: `arena-eval sim serve`")
    pools = Table("pool", "policy worker", "state", "requests", "heartbeat", title="policy workers")
    for p in report["pools"]:
        for w in p["workers"]:
            row = (
                p["pool"], w["worker_id"], str(w["state"]), str(w["requests"]),
                f"{w['heartbeat_age_s']:.1f}s",
            )  # fmt: skip
            pools.add_row(*(esc(c) for c in row))
    if pools.row_count:
        console.print(pools)
    else:
        console.print("no live policy workers: `arena-eval policy serve --pool NAME --policy ...`")
    if report["gateways"]:
        console.print(_gateways_table(report["gateways"]))


def _gateways_table(gateways: list[dict[str, Any]]) -> Table:
    table = Table("gateway", "protocol", "pool", "address", "sessions", "requests", "heartbeat",
                  title="gateways")  # fmt: skip
    for g in gateways:
        cells = (
            g["worker_id"], str(g.get("protocol")), str(g.get("pool")), str(g.get("address")),
            str(g.get("sessions", 0)), str(g.get("requests", 0)), f"{g['heartbeat_age_s']:.1f}s",
        )  # fmt: skip
        table.add_row(*(esc(c) for c in cells))
    return table

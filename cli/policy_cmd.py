"""``arena-eval policy serve`` and ``arena-eval pools``: parse, hand off, print."""

from __future__ import annotations

import logging

import typer
from rich.table import Table

from arena_eval.broker.connection import connect
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import describe_pool, pool_names
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, console, print_json, settings_for

app = typer.Typer(help="Run policy workers (the model pool).", no_args_is_help=True)


@app.command("serve")
def serve_cmd(
    pool: str = typer.Option(..., "--pool", help="Pool name that sims send requests to."),
    policy: str = typer.Option(
        ...,
        "--policy",
        help="Built-in name (zero, random, metaworld-expert, torch) or module:Class.",
    ),
    policy_arg: list[str] = typer.Option(
        [], "--policy-arg", help="Policy argument k=v (repeatable), e.g. action_shape=16x36."
    ),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda[:N] (torch policies)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Most rows per forward pass."),
    max_wait_ms: float = typer.Option(
        2.0, "--max-wait-ms", help="Longest wait after the first request to fill a batch."
    ),
    claim_idle_ms: int = typer.Option(
        5000, "--claim-idle-ms", help="Take over requests pending this long on a dead worker."
    ),
    max_deliveries: int = typer.Option(3, "--max-deliveries", help="Then dead-letter."),
    worker_id: str | None = typer.Option(None, "--worker-id"),
    burst: bool = typer.Option(False, "--burst", help="Exit when the queue is empty (tests)."),
    redis_url: str | None = REDIS_URL_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve a policy to a pool until SIGTERM/SIGINT."""
    from arena_eval.policy_worker.registry import parse_policy_args
    from arena_eval.policy_worker.serve import build_worker, serve

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    settings = settings_for(redis_url)
    worker = build_worker(
        pool,
        policy,
        parse_policy_args(policy_arg),
        settings,
        device=device,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        claim_idle_ms=claim_idle_ms,
        max_deliveries=max_deliveries,
        worker_id=worker_id,
    )
    console.print(
        f"policy worker [bold]{worker.worker_id}[/] serving pool [bold]{pool}[/] "
        f"({worker.spec.name}, actions {list(worker.spec.action_shape)}) on "
        f"{settings.masked_url()}",
        highlight=False,
    )
    stats = serve(worker, burst=burst)
    console.print(
        f"stopped: {stats.requests} requests in {stats.batches} batches, "
        f"{stats.dead_letters} dead letters",
        highlight=False,
    )


def pools_cmd(
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """List model pools: spec, live workers, pending requests and dead letters."""
    settings = settings_for(redis_url)
    r = connect(settings)
    keys = Keys(settings.prefix)
    pools = [describe_pool(r, keys, name) for name in pool_names(r, keys)]
    if json_out:
        print_json({"pools": pools})
        return
    if not pools:
        console.print("no pools yet: start one with `arena-eval policy serve --pool NAME ...`")
        return
    for p in pools:
        spec = p["spec"] or {}
        obs = spec.get("observations")
        obs_text = (
            "any"
            if obs is None
            else ", ".join(f"{k}:{v['dtype']}{v['shape']}" for k, v in obs.items())
        )
        console.print(
            f"[bold]{p['pool']}[/]  policy={spec.get('name')} v{spec.get('version')}  "
            f"actions={spec.get('action_shape')}  obs={obs_text}  "
            f"pending={p['pending_requests']}  dead_letters={p['dead_letters']}",
            highlight=False,
        )
        table = Table("host", "state", "heartbeat", "batches/s", "mean batch", "requests")
        table.add_column("worker", no_wrap=True)
        for w in p["workers"]:
            table.add_row(
                str(w["host"]), str(w["state"]), f"{w['heartbeat_age_s']:.1f}s",
                f"{w['batches_per_s']:.2f}", f"{w['mean_batch_rows']:.2f}", str(w["requests"]),
                w["worker_id"],
            )  # fmt: skip
        if not p["workers"]:
            console.print("  no live workers")
        else:
            console.print(table)

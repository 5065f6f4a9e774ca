"""``arena-eval policy serve|describe`` and ``arena-eval pools``: parse, hand off, print."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from arena_eval.broker.fleet import live_gateways
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import describe_pool, pool_names
from arena_eval.cli.common import (
    JSON_OPTION,
    REDIS_URL_OPTION,
    cli_client,
    console,
    esc,
    print_json,
    settings_for,
)
from arena_eval.cli.metrics_cmd import METRICS_HOST_OPTION, METRICS_PORT_OPTION
from arena_eval.policy_worker.config import PolicyWorkerConfig

if TYPE_CHECKING:
    from arena_eval.policy_worker.server import PolicyWorker

#: The worker's defaults, read as class attributes: the options below show and use them.
_DEFAULTS = PolicyWorkerConfig

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
    device: str = typer.Option(
        _DEFAULTS.device, "--device", help="auto|cpu|cuda[:N] (torch policies)."
    ),
    max_batch: int = typer.Option(
        _DEFAULTS.max_batch, "--max-batch", help="Most rows per forward pass."
    ),
    max_wait_ms: float = typer.Option(
        _DEFAULTS.max_wait_ms,
        "--max-wait-ms",
        help="Longest wait after the first request to fill a batch.",
    ),
    claim_idle_ms: int = typer.Option(
        _DEFAULTS.claim_idle_ms,
        "--claim-idle-ms",
        help="Take over requests pending this long on a dead worker.",
    ),
    max_deliveries: int = typer.Option(
        _DEFAULTS.max_deliveries,
        "--max-deliveries",
        help="Dead-letter a request delivered more times than this.",
    ),
    worker_id: str | None = typer.Option(
        _DEFAULTS.worker_id,
        "--worker-id",
        help="Consumer name in the pool (default: host-pid-random).",
    ),
    burst: bool = typer.Option(False, "--burst", help="Exit when the queue is empty (tests)."),
    redis_url: str | None = REDIS_URL_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
    metrics_port: int = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
) -> None:
    """Serve a policy to a pool until SIGTERM/SIGINT."""
    from arena_eval.broker.metrics_http import serve_process_metrics
    from arena_eval.policy_worker.registry import parse_policy_args
    from arena_eval.policy_worker.serve import serve_pool

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    settings = settings_for(redis_url)

    def announce(worker: PolicyWorker) -> None:
        console.print(
            f"policy worker [bold]{esc(worker.worker_id)}[/] serving pool "
            f"[bold]{esc(pool)}[/] ({esc(worker.spec.name)}, actions "
            f"{list(worker.spec.action_shape)}) on {esc(settings.masked_url())}",
            highlight=False,
        )

    config = PolicyWorkerConfig(
        pool=pool,
        policy=policy,
        policy_args=parse_policy_args(policy_arg),
        device=device,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        claim_idle_ms=claim_idle_ms,
        max_deliveries=max_deliveries,
        worker_id=worker_id,
        redis=settings,
    )
    # before the model loads: /readyz says 503 "not loaded yet: model" meanwhile
    serve_process_metrics("policy", settings, port=metrics_port, host=metrics_host, pool=pool,
                          needs=("model",))  # fmt: skip
    stats = serve_pool(config, burst=burst, on_serving=announce)
    console.print(
        f"stopped: {stats.requests} requests in {stats.batches} batches, "
        f"{stats.dead_letters} dead letters",
        highlight=False,
    )


@app.command("describe")
def describe_cmd(
    name: str = typer.Argument(
        ..., help="Built-in name (zero, random, metaworld-expert, torch) or module:Class."
    ),
    policy_arg: list[str] = typer.Option(
        [],
        "--policy-arg",
        help="Policy argument k=v (repeatable); with every required one, the spec is shown.",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Describe a policy: what it does, its arguments (type, default, help) and its spec."""
    from arena_eval.policy_worker.describe import describe_policy
    from arena_eval.policy_worker.registry import parse_policy_args

    info = describe_policy(name, parse_policy_args(policy_arg))
    if json_out:
        print_json(info)
        return
    console.print(f"[bold]{esc(info['policy'])}[/]  {esc(info['source'])}", highlight=False)
    console.print(esc(info["description"]) or "(no description)", highlight=False)
    table = Table("argument", "type", "default", "help", title="arguments (--policy-arg k=v)")
    for a in info["arguments"]:
        default = "(required)" if a["required"] else repr(a["default"])
        table.add_row(esc(a["name"]), esc(a["type"]), esc(default), esc(a["help"]))
    console.print(table if info["arguments"] else "arguments: none")
    if info["spec"] is not None:
        console.print(f"spec: {esc(_spec_text(info['spec']))}", highlight=False)
    elif info["spec_note"]:
        console.print(f"spec: {esc(info['spec_note'])}", highlight=False)


def _spec_text(spec: dict[str, Any]) -> str:
    obs = spec.get("observations")
    obs_text = (
        "any" if obs is None else ", ".join(f"{k}:{v['dtype']}{v['shape']}" for k, v in obs.items())
    )
    identity = spec.get("policy") or {}
    digest = f" digest={identity.get('digest')}" if identity.get("digest") else ""
    instruction = "  instruction=required" if spec.get("needs_instruction") else ""
    return (
        f"{spec.get('name')} v{spec.get('version')}{digest}  actions={spec.get('action_shape')} "
        f"{spec.get('action_dtype')}  obs={obs_text}  tasks={_tasks_text(spec.get('tasks'))}"
        f"{instruction}"
    )


#: Beyond this many tasks a spec's list is summarised (a multi-task expert declares 50).
_TASKS_SHOWN = 5


def _tasks_text(tasks: list[str] | None) -> str:
    if tasks is None:
        return "any"
    if len(tasks) <= _TASKS_SHOWN:
        return ",".join(tasks)
    return f"{len(tasks)} tasks ({', '.join(tasks[:3])}, ...)"


def pools_cmd(
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """List model pools: spec, live workers, pending requests and dead letters."""
    r, settings = cli_client(redis_url)
    keys = Keys(settings.prefix)
    pools = [describe_pool(r, keys, name) for name in pool_names(r, keys)]
    gateways = [g.to_dict() for g in live_gateways(r, keys)]
    for p in pools:
        p["gateways"] = [g for g in gateways if g.get("pool") == p["pool"]]
    if json_out:
        print_json({"pools": pools})
        return
    if not pools:
        console.print("no pools yet: start one with `arena-eval policy serve --pool NAME ...`")
        return
    for p in pools:
        console.print(
            f"[bold]{esc(p['pool'])}[/]  policy={esc(_spec_text(p['spec'] or {}))}  "
            f"pending={p['pending_requests']}  dead_letters={p['dead_letters']}",
            highlight=False,
        )
        table = Table("host", "state", "heartbeat", "batches/s", "mean batch", "busy", "requests")
        table.add_column("worker", no_wrap=True)
        for w in p["workers"]:
            table.add_row(
                esc(str(w["host"])), esc(str(w["state"])), f"{w['heartbeat_age_s']:.1f}s",
                f"{w['batches_per_s']:.2f}", f"{w['mean_batch_rows']:.2f}",
                f"{w['busy_fraction']:.0%}", str(w["requests"]),
                esc(str(w["worker_id"])),
            )  # fmt: skip
        if not p["workers"]:
            console.print("  no live workers")
        else:
            console.print(table)
        for g in p["gateways"]:
            console.print(
                f"  gateway {esc(str(g.get('protocol')))} on {esc(str(g.get('address')))}: "
                f"{g.get('sessions', 0)} sessions, {g.get('requests', 0)} requests  "
                f"({esc(g['worker_id'])})",
                highlight=False,
            )

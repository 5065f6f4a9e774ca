"""``arena-eval bench``: run the benchmarks in ``benchmarks/`` and print their ratios."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import typer
from rich.status import Status

from arena_eval.benchmarks.fleet_setup import FleetSetup
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, console, print_json, settings_for

app = typer.Typer(help="Benchmarks that print ratios against a baseline measured in the same run.")

#: ``bench fleet``'s defaults are its workload's (``FleetSetup``), so the two cannot drift.
_FLEET = FleetSetup()


def _measuring(json_out: bool) -> AbstractContextManager[Status | None]:
    """A spinner while a benchmark runs; nothing with ``--json`` (stdout is the JSON)."""
    return nullcontext() if json_out else console.status("measuring...", spinner="dots")


@app.command("latency")
def latency_cmd(
    payload: str = typer.Option("all", "--payload", help="proprio | cam224 | gr1 | all"),
    requests: int = typer.Option(100, "--requests", help="Timed requests per path."),
    transport: str = typer.Option(
        "auto", "--transport", help="auto (shm for large payloads on one host) | redis | shm"
    ),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Round-trip p50/p99 of the fabric vs direct ZeroMQ REQ/REP (zero policy)."""
    from arena_eval.benchmarks.latency import format_table, run_latency
    from arena_eval.benchmarks.payloads import PAYLOADS

    if payload != "all" and payload not in PAYLOADS:
        raise typer.BadParameter(
            f"choose one of {', '.join(PAYLOADS)} or all", param_hint="--payload"
        )
    kinds = list(PAYLOADS) if payload == "all" else [payload]
    settings = settings_for(redis_url)
    results = []
    with _measuring(json_out):
        for kind in kinds:
            results.append(
                run_latency(kind, requests=requests, settings=settings, transport=transport)
            )
    if json_out:
        print_json(results[0] if len(results) == 1 else results)
    else:
        console.print(format_table(results), highlight=False, markup=False)
        console.print(
            "ratio = fabric p50 / baseline p50 (seed protocol: msgpack + np.save; raw: zero-copy)",
            style="dim",
        )


@app.command("throughput")
def throughput_cmd(
    clients: int = typer.Option(8, "--clients", help="Concurrent sims sharing one model."),
    rows: int = typer.Option(4, "--rows", help="Rows (envs) per request."),
    latency_ms: float = typer.Option(10.0, "--latency-ms", help="Fixed forward-pass time."),
    seconds: float = typer.Option(5.0, "--seconds", help="Measurement time per path."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Requests/s of K sims sharing one batched pool vs the seed's one-at-a-time server."""
    from arena_eval.benchmarks.throughput import run_throughput

    with _measuring(json_out):
        result = run_throughput(
            clients=clients, rows=rows, latency_ms=latency_ms, seconds=seconds,
            settings=settings_for(redis_url),
        )  # fmt: skip
    if json_out:
        print_json(result)
        return
    console.print(
        f"{clients} sims x {rows} rows, {latency_ms:g} ms forward pass: fabric "
        f"{result['fabric_requests_per_s']:.0f} req/s vs seed {result['seed_requests_per_s']:.0f} "
        f"req/s = [bold]{result['ratio']:.2f}x[/] (ideal {clients}x)",
        highlight=False,
    )
    if "cpu_bound_ratio" in result:
        console.print(
            f"machine CPU per request (every process): fabric "
            f"{result['fabric_cpu_ms_per_request']:.2f} ms, seed "
            f"{result['seed_cpu_ms_per_request']:.2f} ms; on {result['cores']} cores the "
            f"clients' turnaround caps the fabric at {result['cpu_bound_ratio']:.2f}x",
            highlight=False,
        )


@app.command("gateway")
def gateway_cmd(
    clients: str = typer.Option("1,4,8", "--clients", help="Client counts, comma-separated."),
    family: list[str] = typer.Option(
        [], "--family", help="openpi | zmq (repeatable; default both)."
    ),
    latency_ms: float = typer.Option(10.0, "--latency-ms", help="Fixed forward-pass time."),
    seconds: float = typer.Option(5.0, "--seconds", help="Measurement time per point."),
    payload: str = typer.Option(
        "small", "--payload", help="small (state + prompt) | libero (+ two 224x224 cameras)."
    ),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", help="Pool batching window; closes early once every client is in."
    ),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """N unmodified openpi / seed-protocol clients: gateway + pool vs the peers' own servers."""
    from arena_eval.benchmarks.gateway import FAMILIES, format_table, run_gateway_bench

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise typer.BadParameter(
            "comma-separated integers, e.g. 1,4,8", param_hint="--clients"
        ) from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("at least one count, each >= 1", param_hint="--clients")
    bad = sorted(set(family) - set(FAMILIES))
    if bad:
        raise typer.BadParameter(f"choose from {', '.join(FAMILIES)}", param_hint="--family")
    if payload not in ("small", "libero"):
        raise typer.BadParameter("small or libero", param_hint="--payload")
    with _measuring(json_out) as bar:
        result = run_gateway_bench(
            clients=counts, families=family or FAMILIES, latency_ms=latency_ms, seconds=seconds,
            payload=payload, max_wait_ms=max_wait_ms, settings=settings_for(redis_url),
            progress=(lambda text: bar.update(f"measuring {text}")) if bar else None,
        )  # fmt: skip
    if json_out:
        print_json(result)
    else:
        console.print(format_table(result), highlight=False, markup=False, soft_wrap=True)


@app.command("overlap")
def overlap_cmd(
    num_envs: int = typer.Option(
        64, "--num-envs", min=2, help="Env slots of the one sim worker (64: a ~20 ms step)."
    ),
    episodes: int = typer.Option(128, "--episodes", min=1, help="Episodes per timed run."),
    max_steps: int = typer.Option(100, "--max-steps", min=1, help="Steps per episode."),
    task: str = typer.Option("metaworld/reach-v3", "--task", help="Env to step."),
    fixed_ms: float = typer.Option(0.0, "--fixed-ms", min=0, help="Model cost per request."),
    row_ms: float | None = typer.Option(
        None,
        "--row-ms",
        min=0,
        help="Model cost per row.",
        show_default="latency of all rows = env step",
    ),
    max_wait_ms: float = typer.Option(0.0, "--max-wait-ms", min=0, help="Pool batch window."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Alternating sync/overlap runs."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Env steps/s of one sim worker: synchronous rollout vs --overlap (double-buffered)."""
    from arena_eval.benchmarks.overlap import format_result, run_overlap

    with _measuring(json_out):
        result = run_overlap(
            num_envs=num_envs, episodes=episodes, max_steps=max_steps, task=task,
            fixed_ms=fixed_ms, row_ms=row_ms, max_wait_ms=max_wait_ms, rounds=rounds,
            settings=settings_for(redis_url),
        )  # fmt: skip
    if json_out:
        print_json(result)
    else:
        console.print(format_result(result), highlight=False, markup=False)


@app.command("policy")
def policy_rows_cmd(
    batch: str = typer.Option("1,8,64,256", "--batch", help="Rows per request, comma-separated."),
    device: str = typer.Option("cpu,cuda", "--device", help="Devices (cuda is skipped if absent)."),
    model: str = typer.Option("mlp", "--model", help="mlp (Meta-World state) | cnn (PushT)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Your .pt2 instead."),
    seconds: float = typer.Option(2.0, "--seconds", help="Measurement time per figure."),
    no_pool: bool = typer.Option(False, "--no-pool", help="Model alone, no pool through Redis."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Rows/s of a torch policy per batch size and device: the model alone and through a pool."""
    from arena_eval.benchmarks.policy_rows import MODELS, format_table, run_policy_rows

    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(
            "comma-separated integers, e.g. 1,8,64", param_hint="--batch"
        ) from None
    if not batches or min(batches) < 1:
        raise typer.BadParameter("at least one batch size, each >= 1", param_hint="--batch")
    if model not in MODELS:
        raise typer.BadParameter(f"choose from {', '.join(MODELS)}", param_hint="--model")
    with _measuring(json_out):
        result = run_policy_rows(
            batches=batches, devices=[d.strip() for d in device.split(",") if d.strip()],
            model=model, checkpoint=checkpoint, seconds=seconds, pool=not no_pool,
            settings=None if no_pool else settings_for(redis_url),
        )  # fmt: skip
    if json_out:
        print_json(result)
    else:
        console.print(format_table(result), highlight=False, markup=False)


@app.command("saturation")
def saturation_cmd(
    clients: str = typer.Option("1,2,4,8", "--clients", help="Sim counts, comma-separated."),
    rows: int = typer.Option(4, "--rows", help="Rows (envs) per request."),
    base_ms: float = typer.Option(20.0, "--base-ms", help="Forward pass: fixed cost a."),
    row_ms: float = typer.Option(0.2, "--row-ms", help="Forward pass: cost b per row."),
    step_ms: float = typer.Option(0.0, "--step-ms", help="Each sim's env step between requests."),
    max_wait_ms: float | None = typer.Option(
        None, "--max-wait-ms", help="Pool batching window (default: --base-ms)."
    ),
    seconds: float = typer.Option(5.0, "--seconds", help="Measurement time per point."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Busy fraction and mean batch of one pool (affine-cost policy) with K sims."""
    from arena_eval.benchmarks.saturation import format_table, run_saturation

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise typer.BadParameter("comma-separated integers", param_hint="--clients") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("at least one count, each >= 1", param_hint="--clients")
    with _measuring(json_out):
        result = run_saturation(
            clients=counts, rows=rows, base_ms=base_ms, row_ms=row_ms, step_ms=step_ms,
            max_wait_ms=max_wait_ms, seconds=seconds, settings=settings_for(redis_url),
        )  # fmt: skip
    if json_out:
        print_json(result)
    else:
        console.print(format_table(result), highlight=False, markup=False)


@app.command("decode")
def decode_cmd(
    requests: int = typer.Option(200, "--requests", help="Decodes per side."),
    no_pool: bool = typer.Option(False, "--no-pool", help="In-process only, no workers."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """A worker's decode of compressed GR1: fresh buffers vs its reused ones, alternating."""
    from arena_eval.benchmarks.decode_reuse import format_table, run_decode_reuse, run_pool_decode

    result = run_decode_reuse(requests=requests)
    if not no_pool:
        result["pool"] = run_pool_decode(settings_for(redis_url), requests=requests // 2)
    if json_out:
        print_json(result)
    else:
        console.print(format_table(result), highlight=False, markup=False)


@app.command("fleet")
def fleet_cmd(
    episodes: int = typer.Option(
        _FLEET.episodes, "--episodes", min=1, help="Episodes per configuration."
    ),
    k: str = typer.Option(
        ",".join(map(str, _FLEET.ks)), "--k", help="Sim counts K, comma-separated."
    ),
    a_ms: float = typer.Option(_FLEET.a_ms, "--a-ms", min=0, help="Forward pass: fixed cost a."),
    b_ms: float = typer.Option(_FLEET.b_ms, "--b-ms", min=0, help="Forward pass: cost b per row."),
    num_envs: int = typer.Option(_FLEET.num_envs, "--num-envs", min=2, help="Env slots per sim."),
    max_steps: int = typer.Option(
        _FLEET.max_steps, "--max-steps", min=1, help="Steps of every episode."
    ),
    task: str = typer.Option(_FLEET.task, "--task", help="Env to step."),
    max_wait_ms: float | None = typer.Option(
        None, "--max-wait-ms", min=0, help="Pool batching window.", show_default="the pool's"
    ),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Episodes/hour of one evaluation: in-process vs seed-style ZeroMQ vs arena-eval (K sims)."""
    from arena_eval.benchmarks.fleet import format_table, run_fleet

    try:
        ks = tuple(int(c) for c in k.split(",") if c.strip())
    except ValueError:
        raise typer.BadParameter("comma-separated integers, e.g. 1,2,4", param_hint="--k") from None
    if not ks or min(ks) < 1:
        raise typer.BadParameter("at least one K, each >= 1", param_hint="--k")
    setup = FleetSetup(
        episodes=episodes, ks=ks, task=task, num_envs=num_envs, max_steps=max_steps,
        a_ms=a_ms, b_ms=b_ms, max_wait_ms=max_wait_ms,
    )  # fmt: skip
    with _measuring(json_out) as bar:
        result = run_fleet(
            setup, settings=settings_for(redis_url),
            progress=(lambda text: bar.update(f"measuring {text}")) if bar else None,
        )  # fmt: skip
    if json_out:
        print_json(result)
    else:
        console.print(format_table(result), highlight=False, markup=False, soft_wrap=True)

"""Aggregate throughput: K sims sharing one model, fabric vs the seed's server.

The seed's REP socket serves one request at a time, so K clients queue behind
each other; a PolicyWorker batches their rows into one forward pass. Both
servers run the same ``FixedLatencyPolicy`` (a fixed forward-pass time, the
regime of a GPU model at small batch) in their own process, and both are
measured in the same run. The figure is the ratio of requests per second.

It also reads the machine's CPU time (``/proc/stat``, every process: clients, worker,
Redis, kernel) over each side's timed window. With synchronous clients and a model that
sleeps, that work happens while the model waits for the next batch, so a batch cycle is at
least ``L + K * cpu_per_request / cores``: the CPU-bound ceiling printed next to the ratio.

``python -m arena_eval.benchmarks.throughput --clients 8 --latency-ms 10``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import uuid
from typing import Any

import numpy as np

from arena_eval.benchmarks.latency import ROW_CONTEXT, _child, _free_port, _ZmqClient
from arena_eval.broker.connection import resolve_url
from arena_eval.broker.settings import RedisSettings

POLICY = "arena_eval.benchmarks.policies:FixedLatencyPolicy"


def _client_process(make: Any, call: Any, seconds: float, start: Any, counts: Any, i: int) -> None:
    """One sim: make its client, wait for the start, call in a loop until time is up."""
    handle = make()
    try:
        call(handle)  # warm: the first call may wait for the pool
        start.wait()
        stop_at = time.monotonic() + seconds
        n = 0
        while time.monotonic() < stop_at:
            call(handle)
            n += 1
        counts[i] = n
    finally:
        if hasattr(handle, "close"):
            handle.close()


def _machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def _run_clients(clients: int, seconds: float, make: Any, call: Any) -> tuple[int, float | None]:
    """Each client runs in a process of its own, as sims do; return total requests and the
    machine's busy CPU seconds over the timed window (None where /proc/stat is missing).

    Processes, not threads: threads of one process queue on one GIL, so the last
    of eight sent its next request about 3 ms after the replies landed, which the
    benchmark then charged to the fabric. The clock starts once every client is
    made and warm (a fabric client's constructor waits for the pool's worker).
    """
    ctx = mp.get_context("fork")
    counts = ctx.Array("l", clients)
    start = ctx.Barrier(clients + 1)
    procs = [
        ctx.Process(target=_client_process, args=(make, call, seconds, start, counts, i))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    start.wait()
    before = _machine_cpu()
    for p in procs:
        p.join()
    after = _machine_cpu()
    busy = None if before is None or after is None else after[0] - before[0]
    return sum(int(n) for n in counts[:]), busy


def run_throughput(
    *, clients: int = 8, rows: int = 4, latency_ms: float = 10.0, seconds: float = 5.0,
    settings: RedisSettings | None = None,
) -> dict[str, Any]:  # fmt: skip
    from arena_eval.sim_worker.client import PolicyClient

    settings = settings or RedisSettings.from_env()
    url = resolve_url(settings)
    pool = f"bench-tp-{uuid.uuid4().hex[:8]}"
    obs = {"state": np.random.default_rng(0).random((rows, 39), dtype=np.float32)}
    ids = list(range(rows))
    port = _free_port()
    serve = ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", POLICY,
             "--policy-arg", f"latency_ms={latency_ms}", "--max-batch", str(clients * rows),
             "--max-wait-ms", str(latency_ms)]  # fmt: skip
    env = {"ARENA_REDIS_URL": url, "ARENA_PREFIX": settings.prefix}
    with (
        _child(["-m", "arena_eval.benchmarks.zmq_baseline_policy", str(port), str(latency_ms)]),
        _child(serve, env),
    ):
        s = settings.with_url(url)
        fabric, fabric_cpu = _run_clients(
            clients, seconds,
            lambda: PolicyClient(pool, s, timeout_s=60),
            lambda c: c.infer(obs, ids, **ROW_CONTEXT),
        )  # fmt: skip
        seed, seed_cpu = _run_clients(
            clients, seconds,
            lambda: _ZmqClient(port, "seed", stop_on_close=False),
            lambda c: c.infer(obs),
        )  # fmt: skip
    span = seconds  # each side's clock starts once all its clients are connected
    out: dict[str, Any] = {
        "clients": clients,
        "rows_per_request": rows,
        "latency_ms": latency_ms,
        "fabric_requests_per_s": round(fabric / span, 1),
        "seed_requests_per_s": round(seed / span, 1),
        "ratio": round(fabric / max(seed, 1), 2),
        "ideal_ratio": clients,
    }
    if fabric_cpu is not None and seed_cpu is not None and fabric and seed:
        cores = os.cpu_count() or 1
        cpu_ms = fabric_cpu * 1e3 / fabric
        # a cycle: the forward pass, then every client's turnaround on the machine's cores
        floor_cycle_ms = latency_ms + clients * cpu_ms / cores
        out.update(
            cores=cores,
            fabric_cpu_ms_per_request=round(cpu_ms, 3),
            seed_cpu_ms_per_request=round(seed_cpu * 1e3 / seed, 3),
            cpu_bound_ratio=round(clients / floor_cycle_ms * 1e3 / (seed / span), 2),
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    result = run_throughput(clients=args.clients, rows=args.rows, latency_ms=args.latency_ms,
                            seconds=args.seconds)  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Aggregate throughput: K sims sharing one model, fabric vs the seed's server.

The seed's REP socket serves one request at a time, so K clients queue behind
each other; a PolicyWorker batches their rows into one forward pass. Both
servers run the same ``FixedLatencyPolicy`` (a fixed forward-pass time, the
regime of a GPU model at small batch) in their own process, and both are
measured in the same run. The figure is the ratio of requests per second.

``python -m arena_eval.benchmarks.throughput --clients 8 --latency-ms 10``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import numpy as np

from arena_eval.benchmarks.latency import ROW_CONTEXT, _child, _free_port, _ZmqClient
from arena_eval.broker.connection import resolve_url
from arena_eval.broker.settings import RedisSettings

POLICY = "arena_eval.benchmarks.policies:FixedLatencyPolicy"


def _run_clients(clients: int, seconds: float, make: Any, call: Any) -> int:
    """Each thread owns one client and loops until time is up; return total requests.

    The clock starts once every client is made: a fabric client's constructor
    waits for the pool's worker to come up, and counting that start-up (seconds
    on a loaded machine) as serving time understated the fabric's rate.
    """
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]

    def loop(i: int) -> None:
        handle = make()
        try:
            start.wait()
            while time.monotonic() < stop_at[0]:
                call(handle)
                counts[i] += 1
        finally:
            if hasattr(handle, "close"):
                handle.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    stop_at[0] = time.monotonic() + seconds
    for t in threads:
        t.join()
    return sum(counts)


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
        fabric = _run_clients(
            clients, seconds,
            lambda: PolicyClient(pool, s, timeout_s=60),
            lambda c: c.infer(obs, ids, **ROW_CONTEXT),
        )  # fmt: skip
        seed = _run_clients(
            clients, seconds,
            lambda: _ZmqClient(port, "seed", stop_on_close=False),
            lambda c: c.infer(obs),
        )  # fmt: skip
    span = seconds  # each side's clock starts once all its clients are connected
    return {
        "clients": clients,
        "rows_per_request": rows,
        "latency_ms": latency_ms,
        "fabric_requests_per_s": round(fabric / span, 1),
        "seed_requests_per_s": round(seed / span, 1),
        "ratio": round(fabric / max(seed, 1), 2),
    }


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

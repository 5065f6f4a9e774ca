"""Is the model saturated? Busy fraction and mean batch of one pool with K = 1, 2, 4, 8 sims.

The pool serves ``AffineCostPolicy`` (each forward pass sleeps ``a + b * rows``,
a GPU stand-in) in its own process; K client threads, each a sim's
``PolicyClient``, loop on requests of ``rows`` rows with ``step_ms`` of
"env step" between them. For each K, a fresh worker; the figures are taken
from two of its heartbeats (``WorkerStats``) spanning the measured seconds,
so start-up is not counted:

* ``busy_fraction``: seconds inside ``policy.infer`` over wall seconds (1.0:
  the model never waits for requests);
* ``mean_batch_rows`` and ``mean_batch_requests``: how many sims share a pass;
* ``requests_per_s`` and ``ideal_requests_per_s``: K sims whose every request
  joins one batch of all K, back to back (``K / (a + b * K * rows)``).

``arena-eval bench saturation [--clients 1,2,4,8] [--json]``
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import numpy as np

from arena_eval.benchmarks.latency import ROW_CONTEXT, _child
from arena_eval.broker.connection import connect, resolve_url
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings

POLICY = "arena_eval.benchmarks.policies:AffineCostPolicy"
_HEARTBEAT_WAIT_S = 5.0


def run_saturation(
    *, clients: list[int], rows: int = 4, base_ms: float = 20.0, row_ms: float = 0.2,
    step_ms: float = 0.0, max_wait_ms: float | None = None, seconds: float = 5.0,
    settings: RedisSettings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One point per K in ``clients``, each with its own worker; see the module docstring."""
    settings = settings or RedisSettings.from_env()
    url = resolve_url(settings)
    s = settings.with_url(url)
    wait = base_ms if max_wait_ms is None else max_wait_ms
    points = [
        _point(k, rows, base_ms, row_ms, step_ms, wait, seconds, s) for k in clients
    ]  # fmt: skip
    return {
        "rows_per_request": rows, "base_ms": base_ms, "row_ms": row_ms, "step_ms": step_ms,
        "max_wait_ms": wait, "seconds": seconds, "points": points,
    }  # fmt: skip


def _point(
    k: int, rows: int, base_ms: float, row_ms: float, step_ms: float, wait_ms: float,
    seconds: float, settings: RedisSettings,
) -> dict[str, Any]:  # fmt: skip
    from arena_eval.sim_worker.client import PolicyClient

    pool = f"bench-sat-{uuid.uuid4().hex[:8]}"
    serve = ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", POLICY,
             "--policy-arg", f"base_ms={base_ms}", "--policy-arg", f"row_ms={row_ms}",
             "--max-batch", str(k * rows), "--max-wait-ms", str(wait_ms)]  # fmt: skip
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    obs = {"state": np.random.default_rng(0).random((rows, 39), dtype=np.float32)}
    ids = list(range(rows))
    r = connect(settings)
    keys = Keys(settings.prefix)
    stop = threading.Event()
    ready = threading.Barrier(k + 1)
    errors: list[BaseException] = []

    def sim() -> None:
        try:
            with PolicyClient(pool, settings, timeout_s=60) as client:
                ready.wait()
                while not stop.is_set():
                    client.infer(obs, ids, **ROW_CONTEXT)
                    if step_ms:
                        time.sleep(step_ms / 1000.0)
        except BaseException as exc:  # reported after the run
            errors.append(exc)
            ready.abort()

    with _child(serve, env):
        threads = [threading.Thread(target=sim, daemon=True) for _ in range(k)]
        for t in threads:
            t.start()
        try:
            ready.wait()
            time.sleep(1.0)  # warm-up
            first = _next_heartbeat(r, keys, pool)
            time.sleep(seconds)
            last = _next_heartbeat(r, keys, pool)
        except threading.BrokenBarrierError:
            pass  # a sim failed: its error is raised below
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    r.close()
    if errors:
        raise errors[0]
    return _figures(k, rows, base_ms, row_ms, first, last)


def _next_heartbeat(r: Any, keys: Keys, pool: str) -> dict[str, Any]:
    """The worker's heartbeat data, once it is newer than the current one."""
    deadline = time.monotonic() + _HEARTBEAT_WAIT_S
    seen = None
    while time.monotonic() < deadline:
        workers = live_workers(r, keys, pool)
        if workers:
            data = workers[0].data
            if seen is None:
                seen = data.get("heartbeat")
            elif data.get("heartbeat") != seen:
                return dict(data)
        time.sleep(0.02)
    raise TimeoutError(f"no fresh heartbeat from pool {pool!r} in {_HEARTBEAT_WAIT_S:.0f} s")


def _figures(
    k: int, rows: int, base_ms: float, row_ms: float, a: dict[str, Any], b: dict[str, Any]
) -> dict[str, Any]:
    def delta(name: str) -> float:
        return float(b.get(name, 0)) - float(a.get(name, 0))

    wall = delta("heartbeat")
    batches = max(1.0, delta("batches"))
    ideal = k / ((base_ms + row_ms * k * rows) / 1000.0)
    return {
        "clients": k,
        "requests_per_s": round(delta("requests") / wall, 1),
        "ideal_requests_per_s": round(ideal, 1),
        "busy_fraction": round(delta("infer_s") / wall, 3),
        "mean_batch_rows": round(delta("rows") / batches, 2),
        "mean_batch_requests": round(delta("requests") / batches, 2),
        "measured_s": round(wall, 2),
    }


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"affine-cost policy {result['base_ms']:g} ms + {result['row_ms']:g} ms/row, "
        f"{result['rows_per_request']} rows/request, step {result['step_ms']:g} ms, "
        f"window {result['max_wait_ms']:g} ms\n"
        f"{'sims':>4s} {'busy':>6s} {'mean batch rows':>16s} {'requests/batch':>15s} "
        f"{'req/s':>8s} {'ideal req/s':>12s}"
    )
    lines = [head]
    for p in result["points"]:
        lines.append(
            f"{p['clients']:4d} {p['busy_fraction']:6.0%} {p['mean_batch_rows']:16.2f} "
            f"{p['mean_batch_requests']:15.2f} {p['requests_per_s']:8.1f} "
            f"{p['ideal_requests_per_s']:12.1f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run_saturation(clients=[1, 2, 4, 8]), indent=2))

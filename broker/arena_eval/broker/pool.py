"""Model-pool records in Redis: the pool's spec and its workers' heartbeats.

A pool has no registration step beyond its name: the first worker writes the
spec, later workers must match it, and each worker keeps a heartbeat key with
a TTL. Liveness is the existence of that key, so a worker killed with -9
simply disappears from listings after ``HEARTBEAT_TTL_S``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from arena_eval.broker.constants import POLICY_GROUP
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.fields import as_text
from arena_eval.broker.keys import Keys
from arena_eval.broker.spec import PolicySpec, SpecMismatch

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 5.0


class PoolNotFound(ArenaEvalError):
    """No live policy worker serves the pool."""


@dataclass(frozen=True)
class WorkerRecord:
    worker_id: str
    data: dict[str, Any]

    @property
    def host_id(self) -> str:
        return str(self.data.get("host_id", ""))

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - float(self.data.get("heartbeat", 0.0)))


def read_spec(r: redis.Redis, keys: Keys, pool: str) -> PolicySpec | None:
    raw = r.get(keys.pool_spec(pool))
    return None if raw is None else PolicySpec.from_json(raw)


def live_workers(r: redis.Redis, keys: Keys, pool: str) -> list[WorkerRecord]:
    ids = sorted(as_text(m) for m in r.smembers(keys.pool_workers(pool)))
    if not ids:
        return []
    raws = r.mget([keys.pool_worker(pool, w) for w in ids])
    out = []
    for wid, raw in zip(ids, raws, strict=True):
        if raw is not None:
            try:
                out.append(WorkerRecord(wid, json.loads(raw)))
            except ValueError:
                continue
    return out


def register(r: redis.Redis, keys: Keys, pool: str, worker_id: str, spec: PolicySpec) -> None:
    """Publish ``spec`` for the pool, or refuse if live workers serve another one."""
    current = read_spec(r, keys, pool)
    if current is not None:
        reason = current.incompatibility(spec)
        if reason is not None:
            others = [w.worker_id for w in live_workers(r, keys, pool) if w.worker_id != worker_id]
            if others:
                raise SpecMismatch(
                    f"cannot join pool {pool!r}: {reason}. Live workers {others} serve the "
                    "current spec; use another --pool name or stop them first."
                )
    # First and alone: a role that may not serve pools (the sim ACL user) is refused here,
    # before it writes anything; worker roles may not run MULTI, so a transaction can't help.
    r.sadd(keys.pools(), pool)
    prune(r, keys, pool)  # ids of workers that died without deregistering
    pipe = r.pipeline(transaction=False)
    pipe.set(keys.pool_spec(pool), spec.to_json())
    pipe.sadd(keys.pool_workers(pool), worker_id)
    pipe.execute()


def heartbeat(r: redis.Redis, keys: Keys, pool: str, worker_id: str, data: dict[str, Any]) -> None:
    data = {**data, "heartbeat": time.time()}
    pipe = r.pipeline(transaction=False)
    pipe.set(keys.pool_worker(pool, worker_id), json.dumps(data), px=int(HEARTBEAT_TTL_S * 1000))
    pipe.sadd(keys.pool_workers(pool), worker_id)
    pipe.execute()


def deregister(r: redis.Redis, keys: Keys, pool: str, worker_id: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.delete(keys.pool_worker(pool, worker_id))
    pipe.srem(keys.pool_workers(pool), worker_id)
    pipe.execute()


def prune(r: redis.Redis, keys: Keys, pool: str) -> list[str]:
    """Drop ids of workers whose heartbeat expired from the pool's member set."""
    live = {w.worker_id for w in live_workers(r, keys, pool)}
    ids = {as_text(m) for m in r.smembers(keys.pool_workers(pool))}
    dead = sorted(ids - live)
    if dead:
        r.srem(keys.pool_workers(pool), *dead)
    return dead


def pool_names(r: redis.Redis, keys: Keys) -> list[str]:
    return sorted(as_text(m) for m in r.smembers(keys.pools()))


def wait_for_pool(
    r: redis.Redis, keys: Keys, pool: str, timeout_s: float
) -> tuple[PolicySpec, list[WorkerRecord]]:
    """Block until a live worker serves ``pool``; return its spec and workers."""
    deadline = time.monotonic() + timeout_s
    while True:
        workers = live_workers(r, keys, pool)
        spec = read_spec(r, keys, pool)
        if workers and spec is not None:
            return spec, workers
        if time.monotonic() >= deadline:
            raise PoolNotFound(
                f"no live policy worker serves pool {pool!r} (waited {timeout_s:.0f} s). "
                f"Start one: `arena-eval policy serve --pool {pool} --policy zero`, or check "
                "the pool name and --redis-url (`arena-eval pools` lists pools)."
            )
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def describe_pool(r: redis.Redis, keys: Keys, pool: str) -> dict[str, Any]:
    """Everything ``arena-eval pools`` shows about one pool, JSON-ready."""
    spec = read_spec(r, keys, pool)
    live = live_workers(r, keys, pool)
    workers = []
    for w in live:
        d = w.data
        up_s = max(1e-9, float(d.get("heartbeat", 0.0)) - float(d.get("started", 0.0)))
        workers.append(
            {
                "worker_id": w.worker_id,
                "host": d.get("host"),
                "pid": d.get("pid"),
                "state": d.get("state"),
                "heartbeat_age_s": round(w.age_s, 2),
                "busy_s": d.get("busy_s", 0.0),
                "batches": d.get("batches", 0),
                "requests": d.get("requests", 0),
                "rows": d.get("rows", 0),
                "batches_per_s": round(float(d.get("batches", 0)) / up_s, 2),
                "mean_batch_rows": d.get("mean_batch_rows", 0.0),
                "busy_fraction": d.get("busy_fraction", 0.0),
                "infer_calls": d.get("infer_calls", 0),
                "dead_letters": d.get("dead_letters", 0),
                "reclaimed": d.get("reclaimed", 0),
                "policy": d.get("policy"),
                "device": d.get("device"),
            }
        )
    streams = [keys.pool_requests(pool)] + [
        keys.pool_host_requests(pool, h) for h in sorted({w.host_id for w in live} - {""})
    ]
    pending = 0
    queued = 0
    for stream in streams:
        try:
            summary = r.xpending(stream, POLICY_GROUP)
            pending += int(summary.get("pending", 0))
        except redis.ResponseError:
            pass
        queued += int(r.xlen(stream))
    return {
        "pool": pool,
        "spec": spec.to_dict() if spec else None,
        "workers": workers,
        "pending_requests": pending,
        "queued_entries": queued,
        "dead_letters": int(r.xlen(keys.pool_dead(pool))),
    }

"""Sim-worker records: who is alive and what each one is doing.

Same scheme as policy workers (``broker/pool.py``): a set of ids plus one
heartbeat key per worker with a TTL. Liveness is the key's existence, so a
worker killed with -9 drops out of ``arena-eval workers`` within
``HEARTBEAT_TTL_S`` with nobody cleaning up after it. The heartbeat value is
JSON saying what the worker does (idle, waiting for a pool, running a unit,
episodes done), for operators and for ``status`` hints.

Gateways (``arena-eval gateway zmq|openpi``) are sim-side processes too: they
beat into the same set with ``"kind": "gateway"`` in their record, so they
expire the same way when killed. ``live_sim_workers`` leaves them out (a
gateway runs no units, so it must not count as a worker for ``status`` hints
or ``up``'s readiness) and ``live_gateways`` lists only them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from arena_eval.broker import cluster
from arena_eval.broker.fields import as_text
from arena_eval.broker.keys import Keys

HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TTL_S = 5.0
#: The ``kind`` of a gateway's record; sim workers' records carry no kind.
GATEWAY_KIND = "gateway"


@dataclass(frozen=True)
class SimWorkerRecord:
    worker_id: str
    data: dict[str, Any]

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - float(self.data.get("heartbeat", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, "worker_id": self.worker_id, "heartbeat_age_s": round(self.age_s, 2)}


def heartbeat(pipe: Any, keys: Keys, worker_id: str, data: dict[str, Any]) -> None:
    """Queue the heartbeat write on ``pipe`` (a pipeline the caller executes)."""
    value = json.dumps({**data, "heartbeat": time.time()}, sort_keys=True)
    pipe.set(keys.sim_worker(worker_id), value, px=int(HEARTBEAT_TTL_S * 1000))
    pipe.sadd(keys.sim_workers(), worker_id)


def deregister(r: redis.Redis, keys: Keys, worker_id: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.delete(keys.sim_worker(worker_id))
    pipe.srem(keys.sim_workers(), worker_id)
    pipe.execute()


def live_sim_workers(r: redis.Redis, keys: Keys) -> list[SimWorkerRecord]:
    """Sim workers whose heartbeat key exists (gateways left out)."""
    return [w for w in _live_records(r, keys) if w.data.get("kind") != GATEWAY_KIND]


def live_gateways(r: redis.Redis, keys: Keys, pool: str | None = None) -> list[SimWorkerRecord]:
    """Live gateways (all, or those in front of ``pool``)."""
    return [
        w
        for w in _live_records(r, keys)
        if w.data.get("kind") == GATEWAY_KIND and (pool is None or w.data.get("pool") == pool)
    ]


def gateway_heartbeat(pipe: Any, keys: Keys, gateway_id: str, data: dict[str, Any]) -> None:
    """Queue a gateway's heartbeat on ``pipe``: a sim-side record of kind ``gateway``."""
    heartbeat(pipe, keys, gateway_id, {**data, "kind": GATEWAY_KIND})


def _live_records(r: redis.Redis, keys: Keys) -> list[SimWorkerRecord]:
    """Records whose heartbeat key exists; ids whose key expired are pruned from the set."""
    ids = sorted(as_text(m) for m in r.smembers(keys.sim_workers()))
    if not ids:
        return []
    raws = cluster.mget(r, [keys.sim_worker(w) for w in ids])  # untagged: several slots
    out = []
    dead = []
    for wid, raw in zip(ids, raws, strict=True):
        if raw is None:
            dead.append(wid)
            continue
        try:
            out.append(SimWorkerRecord(wid, json.loads(raw)))
        except ValueError:
            continue
    if dead:
        r.srem(keys.sim_workers(), *dead)
    return out

"""Finish every job exactly once even when Redis loses acknowledged writes.

Why it exists: Redis replication is asynchronous. When a master dies, its
replica takes over with whatever had reached it, so a write the master had
already acknowledged can vanish: an episode's result, a unit, a state change.
On one server the same happens when it restarts without persistence. The unit
queue cannot notice (the unit that produced a lost result is gone too), so a
job would sit in ``running`` for ever with results missing.

``reconcile`` looks at the live jobs from outside: a job that is not ended,
is older than a grace period, and has *no unit left on the stream* (queued or
leased) cannot make progress. If all of its results are there, it runs the
completion transition (whose write may be the one that was lost); otherwise
it re-queues units for exactly the missing episodes, split like the job's own
shards. Episodes are deterministic per seed and results are write-once
(HSETNX), so re-running one is safe and a result is stored once, whoever wins.

Idle sim workers call it every few seconds; a short lock per job
(``keys.job_reconcile``) keeps two of them from queuing the same episodes
twice (which would only waste work). Reading the unit stream before the
results matters: a worker stores results before it deletes its unit, so a
job seen without units has, by then, every result that was not lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from arena_eval.broker.fields import as_text
from arena_eval.broker.jobs import TERMINAL, JobSpec, JobState, queue_completion
from arena_eval.broker.keys import Keys
from arena_eval.broker.units import enqueue, iter_units

#: States of a job that may still need work.
ACTIVE_STATES = frozenset(s.value for s in JobState if s not in TERMINAL)
#: A job younger than this is left alone: its submit may still be queuing units (cluster).
GRACE_S = 10.0
#: How long one worker holds a job's reconcile lock.
LOCK_MS = 30_000
#: Newest jobs looked at per call.
SCAN_JOBS = 200


@dataclass(frozen=True)
class Repair:
    """What ``reconcile`` did to one job: ``completed`` it, or re-queued ``requeued`` episodes."""

    job_id: str
    completed: bool
    requeued: int


def reconcile(
    r: redis.Redis, keys: Keys, *, grace_s: float = GRACE_S, now: float | None = None
) -> list[Repair]:
    """Complete or re-queue the live jobs that have no unit left; return what was done."""
    now = time.time() if now is None else now
    ids = [as_text(m) for m in r.zrevrangebyscore(keys.jobs(), now - grace_s, "-inf",
                                                   start=0, num=SCAN_JOBS)]  # fmt: skip
    if not ids:
        return []
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "state", "spec")
    records = pipe.execute()
    live = {
        job_id: as_text(spec)
        for job_id, (state, spec) in zip(ids, records, strict=True)
        if state is not None and spec is not None and as_text(state) in ACTIVE_STATES
    }
    if not live:
        return []
    with_units = {unit.job_id for unit in iter_units(r, keys)}  # before the results (see above)
    repairs: list[Repair] = []
    for job_id, spec_json in live.items():
        if job_id in with_units:
            continue
        repair = _repair(r, keys, job_id, JobSpec.from_json(spec_json), now)
        if repair is not None:
            repairs.append(repair)
    return repairs


def _repair(r: redis.Redis, keys: Keys, job_id: str, spec: JobSpec, now: float) -> Repair | None:
    stored = {int(i) for i in map(as_text, r.hkeys(keys.job_results(job_id))) if i.isdigit()}
    shards = _missing_shards(spec.shards(), stored)
    if not r.set(keys.job_reconcile(job_id), "1", nx=True, px=LOCK_MS):
        return None  # another worker is on it
    pipe: Any = r.pipeline(transaction=False)
    if not shards:
        queue_completion(pipe, keys, job_id, now)
        completed = bool(pipe.execute()[0] == 1)
        return Repair(job_id, completed, 0)
    enqueue(pipe, keys, job_id, shards)
    pipe.execute()
    return Repair(job_id, False, sum(count for _, count in shards))


def _missing_shards(shards: list[tuple[int, int]], stored: set[int]) -> list[tuple[int, int]]:
    """The missing episodes as (start, count) runs, each inside one of the job's shards."""
    out: list[tuple[int, int]] = []
    for start, count in shards:
        run_start = None
        for i in range(start, start + count + 1):
            missing = i < start + count and i not in stored
            if missing and run_start is None:
                run_start = i
            elif not missing and run_start is not None:
                out.append((run_start, i - run_start))
                run_start = None
    return out

"""Jobs with results, written through the broker's own API, for the report tests.

A sim worker stores an episode with ``results.record`` (the write-once result, its counters,
the timing sums and the latency histogram, in one round trip); these helpers call the same
function with episodes whose outcomes the test chooses, so the report's figures can be checked
against known numbers without running simulators for minutes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import redis

from arena_eval.broker import jobs, results
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import SUM_PREFIX, LatencyHistogram

#: Mean per-request timings (ms) the helper records: the policy side, and the round trip.
TIMING = {"queue_ms": 0.4, "decode_ms": 0.1, "infer_ms": 1.5, "encode_ms": 0.05}
ROUND_TRIP_MS = 3.0
#: Simulator time the helper records per env step (ms).
SIM_MS_PER_STEP = 1.2


def write_job(
    r: redis.Redis,
    keys: Keys,
    *,
    pool: str,
    tasks: Sequence[str],
    episodes: int,
    success: Sequence[Sequence[bool]],
    start: float | None = None,
    seed: int = 0,
) -> str:
    """Submit a job over ``tasks`` and record ``episodes`` per task; ``success[t][i]`` is the
    outcome of task ``t``'s episode ``i``. Lengths, times and latencies are reproducible."""
    rng = random.Random(f"{pool}-{seed}")
    spec = JobSpec(task=tasks[0], tasks=tuple(tasks), pool=pool, episodes=episodes, seed=seed)
    job_id = jobs.submit(r, keys, spec)
    jobs.mark_running(r, keys, job_id)
    now = time.time() if start is None else start
    for t, task in enumerate(tasks):
        batch = []
        hist = LatencyHistogram()
        sums = {SUM_PREFIX + k: 0.0 for k in (*TIMING, "round_trip_ms")}
        requests = 0
        for i in range(episodes):
            length = rng.randint(40, 150) if success[t][i] else 150
            now += length * 0.01
            for _ in range(length // 8):
                requests += 1
                rt = ROUND_TRIP_MS * rng.lognormvariate(0.0, 0.3)
                hist.add(rt)
                sums[SUM_PREFIX + "round_trip_ms"] += rt
                for k, v in TIMING.items():
                    sums[SUM_PREFIX + k] += v
            batch.append(
                EpisodeResult(
                    index=t * episodes + i,
                    length=length,
                    success=bool(success[t][i]),
                    seed=seed + i,
                    return_=float(length),
                    worker="test-worker",
                    wall_s=length * 0.01,
                    finished_at=now,
                    task=task,
                    task_episode=i,
                )
            )
        sums[SUM_PREFIX + "sim_ms"] = SIM_MS_PER_STEP * sum(e.length for e in batch)
        counters = {"steps": sum(e.length for e in batch), "requests": requests, **hist.fields()}
        results.record(r, keys, job_id, "test-worker", now, batch, counters, sums)
    return job_id

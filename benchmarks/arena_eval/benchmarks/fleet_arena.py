"""``bench fleet`` (c), arena-eval: a job run by K ``sim serve`` workers and one policy worker.

Nothing here is a stand-in: the children are ``arena-eval policy serve`` (the
``AffineCostPolicy``) and K ``arena-eval sim serve`` processes (``--overlap`` or not), and the
episodes are a submitted job's, leased in units of ``num_envs`` episodes (one per env slot)
and recorded in Redis like any evaluation's. Everything lives under a key prefix of its own,
so the run neither takes nor leaves work in the user's namespace.

The clock: once every worker is up, a warm-up job of one unit per sim is run until every
sim has taken a unit (a sim builds its env on its first unit; the other configurations build
theirs before their clock starts too). The timed job then runs from its ``created`` time
(submitted) to its ``finished`` time (its last result recorded, stamped by the sim that
recorded it). The model's figures are the policy worker's heartbeat counters (``infer_s``,
``batches``, ``rows``) read before the job and once more after it, when the worker is idle;
the sims' stepping time and round trips are the job's stats.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import redis

from arena_eval.benchmarks.fleet_procs import Children
from arena_eval.benchmarks.fleet_setup import POLICY, FleetSetup, cpu_cores, figures
from arena_eval.broker import jobs, results
from arena_eval.broker.connection import connect, resolve_url
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.fleet import live_sim_workers
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import SIM_MS_FIELD, SUM_PREFIX
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings

START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 600.0
WARMUP_TRIES = 4


def run_arena(
    setup: FleetSetup, k: int, *, overlap: bool, settings: RedisSettings
) -> dict[str, Any]:
    """One arena-eval run with ``k`` sim workers; the table row (``fleet_setup.figures``)."""
    url = resolve_url(settings)
    tag = uuid.uuid4().hex[:8]
    s = replace(settings, url=url, prefix=f"{settings.prefix}fleet-{tag}:")
    keys = Keys(s.prefix)
    pool = f"fleet-{tag}"
    env = {"ARENA_REDIS_URL": url, "ARENA_PREFIX": s.prefix}
    serve = ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", POLICY,
             "--max-batch", str(k * setup.num_envs)]  # fmt: skip
    for name, value in setup.policy_args().items():
        serve += ["--policy-arg", f"{name}={value}"]
    if setup.max_wait_ms is not None:
        serve += ["--max-wait-ms", str(setup.max_wait_ms)]
    sim = ["-m", "arena_eval.cli", "sim", "serve", "--num-envs", str(setup.num_envs),
           "--overlap" if overlap else "--no-overlap"]  # fmt: skip
    r = connect(s)
    try:
        with Children() as kids:
            kids.start(serve, env)
            for i in range(k):
                kids.start([*sim, "--worker-id", f"fleet-{tag}-{i}"], env)
            _wait(kids, lambda: live_workers(r, keys, pool) and len(live_sim_workers(r, keys)) >= k)
            _warm_up(kids, r, keys, setup, pool, k)
            before = _heartbeat(kids, r, keys, pool, time.time())
            job = _finish(kids, r, keys, _spec(setup, pool, setup.episodes, seed=0))
            after = _heartbeat(kids, r, keys, pool, job.finished or time.time())
        stats = results.checked_stats(results.read_stats(r, keys, job.job_id), "stats", [])
        jobs.prune(r, keys, 0.0)  # the run's jobs are its own: leave none behind
    finally:
        r.close()

    def delta(name: str) -> float:
        return float(after.get(name, 0)) - float(before.get(name, 0))

    assert job.finished is not None
    return figures(
        "c+overlap" if overlap else "c", k, episodes=int(stats.get("episodes", 0)),
        wall_s=job.finished - job.created, sim_cores=min(k, cpu_cores()),
        infer_s=delta("infer_s"), batches=int(delta("batches")), rows=int(delta("rows")),
        length_sum=stats.get("length_sum", 0.0), sim_ms=stats.get(SIM_MS_FIELD, 0.0),
        requests=int(stats.get("requests", 0)),
        round_trip_ms=stats.get(f"{SUM_PREFIX}round_trip_ms", 0.0),
    )  # fmt: skip


def _spec(setup: FleetSetup, pool: str, episodes: int, *, seed: int) -> JobSpec:
    """A job of ``episodes``, one unit per ``num_envs`` of them (one episode per env slot)."""
    return JobSpec(
        task=setup.task, pool=pool, episodes=episodes, num_envs=setup.num_envs,
        max_steps=setup.max_steps, seed=seed, shard_size=setup.num_envs,
    )  # fmt: skip


def _wait(kids: Children, ready: Any, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        kids.check_alive()
        if time.monotonic() > deadline:
            raise ArenaEvalError(f"bench fleet: workers not up after {timeout_s:.0f} s")
        time.sleep(0.05)


def _finish(kids: Children, r: redis.Redis, keys: Keys, spec: JobSpec) -> jobs.Job:
    """Submit ``spec`` and wait for the job to complete; raise if it ends otherwise."""
    job_id = jobs.submit(r, keys, spec)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = jobs.get_job(r, keys, job_id)
        if job.state == JobState.COMPLETED:
            return job
        if job.state.terminal:
            raise ArenaEvalError(f"bench fleet: job {job_id} {job.state.value}: {job.reason}")
        kids.check_alive()
        if time.monotonic() > deadline:
            raise ArenaEvalError(f"bench fleet: job {job_id} not done in {JOB_TIMEOUT_S:.0f} s")
        time.sleep(0.02)


def _warm_up(
    kids: Children, r: redis.Redis, keys: Keys, setup: FleetSetup, pool: str, k: int
) -> None:
    """Run one-unit-per-sim jobs until every sim has run a unit (and so built its env)."""
    seen: set[str] = set()
    for attempt in range(WARMUP_TRIES):
        spec = _spec(setup, pool, k * setup.num_envs, seed=10_000 * (attempt + 1))
        job = _finish(kids, r, keys, spec)
        seen |= set(results.read_workers(r, keys, job.job_id))
        if len(seen) >= k:
            return
    raise ArenaEvalError(f"bench fleet: only {len(seen)} of {k} sims took a warm-up unit")


def _heartbeat(
    kids: Children, r: redis.Redis, keys: Keys, pool: str, after: float
) -> dict[str, Any]:
    """The policy worker's heartbeat data, once one was written after ``after``."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        workers = live_workers(r, keys, pool)
        if workers and float(workers[0].data.get("heartbeat", 0.0)) > after:
            return dict(workers[0].data)
        kids.check_alive()
        time.sleep(0.05)
    raise ArenaEvalError(f"bench fleet: no heartbeat from pool {pool!r} after the job")

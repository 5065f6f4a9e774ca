"""Evaluation jobs over a fleet of sim workers: the issue's "done when" points.

Real Redis, real Meta-World, real policy and sim workers in subprocesses
(started with the CLI, given the test's Redis URL and key prefix, killed in
teardown). Each test would fail if the mechanism it names broke: results
counted twice, a dead worker's unit never taken over, a cancel ignored, a
spec mismatch or a missing pool turning into a hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import fleet, jobs, pool, results, status, units
from arena_eval.broker.constants import SIM_GROUP
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.service import SimWorker
from tests.worker_procs import Procs, procs, wait_until

pytest.importorskip("gymnasium")  # every job here runs CartPole or Meta-World: the [sim] extra

TASK = "metaworld/door-open-v3"
EXPERT = ("--policy", "metaworld-expert", "--policy-arg", "task=door-open-v3")
POOL = "expert"


@pytest.fixture
def needs_metaworld() -> None:
    pytest.importorskip("metaworld")


@pytest.fixture
def fleet_procs(settings: RedisSettings, r: redis.Redis, tmp_path: Path) -> Iterator[Procs]:
    # depends on ``r``: children are killed before the test's keys are deleted
    with procs(settings, tmp_path) as p:
        yield p


def start_pool(p: Procs, pool_name: str = POOL, *policy: str) -> subprocess.Popen[bytes]:
    return p.cli("policy", "serve", "--pool", pool_name, *(policy or EXPERT), name="policy")


def start_sims(p: Procs, n: int, *args: str) -> list[subprocess.Popen[bytes]]:
    return [p.cli("sim", "serve", *args, name="sim") for _ in range(n)]


def wait_ready(r: redis.Redis, keys: Keys, p: Procs, sims: int, pool_name: str = POOL) -> None:
    wait_until(lambda: pool.live_workers(r, keys, pool_name), 60, "policy worker", p.procs)
    wait_until(
        lambda: len(fleet.live_sim_workers(r, keys)) == sims, 60, f"{sims} sim workers", p.procs
    )


def submit(settings: RedisSettings, *args: str) -> str:
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    out = CliRunner().invoke(app, ["submit", *args, "--json"], env=env)
    assert out.exit_code == 0, out.output
    return str(json.loads(out.stdout)["job_id"])


def wait_terminal(
    r: redis.Redis, keys: Keys, job_id: str, p: Procs, timeout_s: float = 90
) -> jobs.Job:
    def done() -> jobs.Job | None:
        job = jobs.get_job(r, keys, job_id)
        return job if job.state.terminal else None

    job = wait_until(
        done, timeout_s, f"job {job_id} to end", [q for q in p.procs if q.poll() is None]
    )
    assert isinstance(job, jobs.Job)
    return job


def outcomes(r: redis.Redis, keys: Keys, job_id: str) -> list[tuple[int, bool, int]]:
    return [(e.index, e.success, e.length) for e in results.read_results(r, keys, job_id)]


def assert_exactly_once(r: redis.Redis, keys: Keys, job_id: str, n: int) -> None:
    assert [e[0] for e in outcomes(r, keys, job_id)] == list(range(n))
    assert results.read_stats(r, keys, job_id)["episodes"] == str(n)  # no double counting
    assert not [u for u in units.iter_units(r, keys) if u.job_id == job_id]
    assert r.xpending(keys.units(), SIM_GROUP)["pending"] == 0


def mw_args(episodes: int, *extra: str) -> tuple[str, ...]:
    return ("--task", TASK, "--pool", POOL, "--episodes", str(episodes), *extra)


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_job_on_two_sim_workers(
    settings: RedisSettings, r: redis.Redis, keys: Keys, fleet_procs: Procs
) -> None:
    start_pool(fleet_procs)
    start_sims(fleet_procs, 2, "--num-envs", "3")
    wait_ready(r, keys, fleet_procs, sims=2)
    job_id = submit(settings, *mw_args(30))
    job = wait_terminal(r, keys, job_id, fleet_procs)
    assert job.state is JobState.COMPLETED, job.reason
    assert_exactly_once(r, keys, job_id, 30)
    report = status.results_report(r, keys, job_id)
    assert report["metrics"]["num_episodes"] == 30
    assert report["metrics"]["success_rate"] >= 0.9
    s = status.job_status(r, keys, job_id)
    assert len(s["workers"]) == 2  # both workers ran units
    assert s["steps"] >= sum(e["length"] for e in report["episodes"])
    assert s["requests"] > 0 and s["round_trip_p50_ms"] is not None
    assert s["round_trip_p99_ms"] >= s["round_trip_p50_ms"] and s["mean_infer_ms"] is not None
    # `arena-eval workers --json` lists both sim workers and the pool's policy worker
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    shards = len(JobSpec(TASK, POOL, 30).shards())

    def listing() -> dict[str, Any] | None:
        out = json.loads(CliRunner().invoke(app, ["workers", "--json"], env=env).stdout)
        done = sum(w["units_done"] for w in out["sim_workers"])
        return out if done == shards else None  # heartbeats lag by up to 0.5 s

    found = wait_until(listing, 10, "workers to report every unit")
    assert isinstance(found, dict)
    assert len(found["sim_workers"]) == 2
    assert all(w["heartbeat_age_s"] < 5 for w in found["sim_workers"])
    (expert,) = [p for p in found["pools"] if p["pool"] == POOL]
    assert len(expert["workers"]) == 1 and expert["workers"][0]["requests"] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
@pytest.mark.parametrize("mode", ["--no-overlap", "--overlap"])
def test_one_or_three_sim_workers_give_identical_episodes(
    settings: RedisSettings, r: redis.Redis, keys: Keys, fleet_procs: Procs, mode: str
) -> None:
    start_pool(fleet_procs)
    start_sims(fleet_procs, 1, "--num-envs", "3")  # the reference: synchronous
    wait_ready(r, keys, fleet_procs, sims=1)
    alone = submit(settings, *mw_args(30))
    assert wait_terminal(r, keys, alone, fleet_procs).state is JobState.COMPLETED
    # two more workers with other slot counts: episodes land on other slots and workers;
    # with --overlap the 2-slot worker runs two lanes of one slot, double-buffered
    start_sims(fleet_procs, 1, "--num-envs", "1", mode)
    start_sims(fleet_procs, 1, "--num-envs", "2", mode)
    wait_ready(r, keys, fleet_procs, sims=3)
    shared = submit(settings, *mw_args(30, "--shard-size", "3"))
    assert wait_terminal(r, keys, shared, fleet_procs).state is JobState.COMPLETED
    assert len(results.read_workers(r, keys, shared)) == 3
    assert outcomes(r, keys, alone) == outcomes(r, keys, shared)
    assert len({length for _, _, length in outcomes(r, keys, alone)}) > 5  # seeds differ


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_kill_9_of_a_sim_worker_mid_unit(
    settings: RedisSettings, r: redis.Redis, keys: Keys, fleet_procs: Procs
) -> None:
    start_pool(fleet_procs)
    sims = start_sims(fleet_procs, 2, "--num-envs", "2", "--lease-ms", "1500")
    wait_ready(r, keys, fleet_procs, sims=2)
    job_id = submit(settings, *mw_args(24, "--shard-size", "8"))

    def victim() -> dict[str, Any] | None:
        for w in fleet.live_sim_workers(r, keys):
            d = w.data
            # mid-unit: some episodes stored, several (>= 1 more round) still to run
            if d.get("state") == "running" and 1 <= d.get("episodes_done", 0) <= 4:
                return w.to_dict()
        return None

    target = wait_until(victim, 60, "a worker mid-unit", fleet_procs.procs)
    assert isinstance(target, dict)
    proc = next(p for p in sims if p.pid == target["pid"])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    job = wait_terminal(r, keys, job_id, fleet_procs)
    assert job.state is JobState.COMPLETED, job.reason
    assert_exactly_once(r, keys, job_id, 24)
    start, end = (int(x) for x in target["unit"].split("-"))
    writers = {e.worker for e in results.read_results(r, keys, job_id)[start:end]}
    assert target["worker_id"] in writers  # it had stored some episodes of the unit ...
    assert len(writers) == 2  # ... and the survivor took the unit over and ran the rest


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_cancel_stops_a_running_job(
    settings: RedisSettings, r: redis.Redis, keys: Keys, fleet_procs: Procs
) -> None:
    start_pool(fleet_procs)
    (sim,) = start_sims(fleet_procs, 1, "--num-envs", "2")
    wait_ready(r, keys, fleet_procs, sims=1)
    job_id = submit(settings, *mw_args(400, "--shard-size", "200"))  # units of ~15 s
    wait_until(
        lambda: int(results.read_stats(r, keys, job_id).get("episodes", 0)) >= 4, 60,
        "some episodes", fleet_procs.procs,
    )  # fmt: skip
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    out = CliRunner().invoke(app, ["cancel", job_id], env=env)
    assert out.exit_code == 0 and "cancelled" in out.stdout
    t0 = time.monotonic()

    def idle() -> bool:
        return all(w.data.get("state") == "idle" for w in fleet.live_sim_workers(r, keys))

    wait_until(idle, 5, "the sim worker to drop the job", fleet_procs.procs)
    assert time.monotonic() - t0 < 5
    assert jobs.get_job(r, keys, job_id).state is JobState.CANCELLED
    assert not [u for u in units.iter_units(r, keys) if u.job_id == job_id]
    assert r.xpending(keys.units(), SIM_GROUP)["pending"] == 0
    done = len(outcomes(r, keys, job_id))
    time.sleep(1.0)
    assert len(outcomes(r, keys, job_id)) == done < 100
    assert sim.poll() is None  # the worker itself keeps serving


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_spec_mismatch_fails_fast_with_a_readable_reason(
    settings: RedisSettings, r: redis.Redis, keys: Keys, fleet_procs: Procs
) -> None:
    # a pool that wants float32 state where Meta-World gives float64
    start_pool(fleet_procs, "zero32", "--policy", "zero", "--policy-arg", "action_shape=1x4",
               "--policy-arg", "obs=state:float32:39")  # fmt: skip
    start_sims(fleet_procs, 2, "--num-envs", "2")
    wait_ready(r, keys, fleet_procs, sims=2, pool_name="zero32")
    t0 = time.monotonic()
    job_id = submit(settings, "--task", TASK, "--pool", "zero32", "--episodes", "20",
                    "--shard-size", "4")  # fmt: skip
    job = wait_terminal(r, keys, job_id, fleet_procs, timeout_s=20)
    assert time.monotonic() - t0 < 20
    assert job.state is JobState.FAILED
    assert "'state'" in job.reason and "float32" in job.reason and "float64" in job.reason
    assert job.reason.startswith(f"observations of task {TASK!r} do not match pool 'zero32'")
    assert results.read_stats(r, keys, job_id).get("requests") is None  # failed before asking
    wait_until(lambda: not [u for u in units.iter_units(r, keys) if u.job_id == job_id], 5,
               "units dropped")  # fmt: skip
    wait_until(lambda: r.xpending(keys.units(), SIM_GROUP)["pending"] == 0, 5, "units acked")


def test_no_pool_says_waiting_for_pool_then_runs(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    sim = SimWorker(settings, num_envs=2, block_ms=200, pool_poll_s=0.1)
    thread = threading.Thread(target=sim.run, daemon=True)
    thread.start()
    policy: PolicyWorker | None = None
    try:
        job_id = submit(settings, "--task", "CartPole-v1", "--pool", "later", "--episodes", "4")

        def waiting() -> bool:
            return jobs.get_job(r, keys, job_id).state is JobState.WAITING_FOR_POOL

        wait_until(waiting, 5, "waiting_for_pool")
        env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
        shown = CliRunner().invoke(app, ["status", job_id], env=env)
        assert shown.exit_code == 0
        text = " ".join(shown.stdout.split())
        assert "waiting_for_pool" in text and "arena-eval policy serve --pool later" in text
        # while the pool is missing the unit goes back to the queue (the worker stays free for
        # other jobs), and the job is not lost
        time.sleep(0.5)
        assert [u.job_id for u in units.iter_units(r, keys)] == [job_id]
        policy = PolicyWorker("later", ZeroPolicy(action_shape="1x1"), settings)
        threading.Thread(target=policy.run, daemon=True).start()

        def completed() -> bool:
            return jobs.get_job(r, keys, job_id).state is JobState.COMPLETED

        wait_until(completed, 20, "the job to run once the pool appears")
        assert jobs.get_job(r, keys, job_id).reason == ""
    finally:
        sim.stop()
        if policy is not None:
            policy.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert fleet.live_sim_workers(r, keys) == []  # deregistered on a clean stop


def test_retried_unit_skips_stored_episodes_and_burst_exits(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    policy = PolicyWorker("zero1", ZeroPolicy(action_shape="1x1"), settings)
    thread = threading.Thread(target=policy.run, daemon=True)
    thread.start()
    try:
        job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="zero1", episodes=4))
        # episode 2 was stored by an earlier holder of the unit, which then died
        earlier = EpisodeResult(index=2, seed=2, success=False, return_=1.0, length=999,
                                metrics={}, worker="earlier", wall_s=0.0,
                                finished_at=0.0)  # fmt: skip
        results.record(r, keys, job_id, "earlier", time.time(), [earlier], {}, {})
        handled = SimWorker(settings, num_envs=2, block_ms=100).run(burst=True)
    finally:
        policy.stop()
        thread.join(10)
    assert handled == 1
    assert jobs.get_job(r, keys, job_id).state is JobState.COMPLETED
    stored = results.read_results(r, keys, job_id)
    assert [e.worker == "earlier" for e in stored] == [False, False, True, False]
    stats = results.read_stats(r, keys, job_id)
    ran = sum(e.length for e in stored if e.worker != "earlier")
    assert int(stats["steps"]) == ran  # episode 2 was not run again


def test_submit_wait_exit_status(settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    good = PolicyWorker("one", ZeroPolicy(action_shape="2x1"), settings)
    wrong = PolicyWorker("two", ZeroPolicy(action_shape="2x2"), settings)  # CartPole takes 1
    sim = SimWorker(settings, num_envs=2, block_ms=200)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (good, wrong, sim)]
    for t in threads:
        t.start()
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    runner = CliRunner()
    try:
        args = ["submit", "--task", "CartPole-v1", "--episodes", "5", "--wait", "--json"]
        ok = runner.invoke(app, [*args, "--pool", "one"], env=env)
        assert ok.exit_code == 0, ok.output
        final = json.loads(ok.stdout)
        assert final["state"] == "completed" and final["episodes_done"] == 5
        bad = runner.invoke(app, [*args, "--pool", "two"], env=env)
        assert bad.exit_code == 1
        final = json.loads(bad.stdout)
        assert final["state"] == "failed" and "2-dim actions" in final["reason"]
    finally:
        for w in (good, wrong, sim):
            w.stop()
        for t in threads:
            t.join(10)


def test_sim_worker_survives_its_unit_stream_being_deleted(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    policy = PolicyWorker("zero2", ZeroPolicy(action_shape="1x1"), settings)
    sim = SimWorker(settings, num_envs=2, block_ms=300)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (policy, sim)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: fleet.live_sim_workers(r, keys), 20, "the sim worker")
        time.sleep(0.5)  # now blocked in XREADGROUP on the unit stream
        r.delete(keys.units())  # FLUSHALL-like loss of the stream and its group
        time.sleep(0.5)
        assert threads[1].is_alive()
        job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="zero2", episodes=2))
        done = wait_until(lambda: jobs.get_job(r, keys, job_id).state.terminal, 60, "the job", [])
        assert done and jobs.get_job(r, keys, job_id).state is JobState.COMPLETED
    finally:
        sim.stop()
        policy.stop()
        for t in threads:
            t.join(10)


def test_pool_that_never_answers_fails_the_job_instead_of_hanging(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    from tests.policies_for_tests import HangingPolicy

    policy = PolicyWorker("hung", HangingPolicy(hang_s=8), settings)
    sim = SimWorker(settings, num_envs=1, block_ms=200, policy_timeout_s=0.5)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (policy, sim)]
    for t in threads:
        t.start()
    try:
        job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="hung", episodes=1))
        wait_until(lambda: jobs.get_job(r, keys, job_id).state.terminal, 30, "the job to fail")
        job = jobs.get_job(r, keys, job_id)
        assert job.state is JobState.FAILED
        assert "did not answer 3 request(s) in a row" in job.reason
    finally:
        sim.stop()
        policy.stop()
        for t in threads:
            t.join(15)

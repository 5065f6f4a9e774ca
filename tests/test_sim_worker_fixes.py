"""Sim workers and pools nobody serves: no head-of-line blocking, a prompt SIGTERM, true words.

Real Redis, CartPole, zero policies; workers run as CLI subprocesses where the
test is about processes (signals, several jobs), in threads otherwise.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import jobs, results, units
from arena_eval.broker.constants import SIM_GROUP
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.fleet import live_sim_workers
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.service import SimWorker
from tests.worker_procs import Procs, procs, wait_until

pytest.importorskip("gymnasium")

ZERO = ("--policy", "zero", "--policy-arg", "action_shape=1x1")


def _serve_pool(p: Procs, name: str) -> subprocess.Popen[bytes]:
    return p.cli("policy", "serve", "--pool", name, *ZERO, name=f"policy-{name}")


def _state(r: redis.Redis, keys: Keys, job_id: str) -> JobState:
    return jobs.get_job(r, keys, job_id).state


def _episodes(r: redis.Redis, keys: Keys, job_id: str) -> int:
    return int(results.read_stats(r, keys, job_id).get("episodes", 0))


def _completed_once(r: redis.Redis, keys: Keys, job_id: str, n: int) -> None:
    assert _state(r, keys, job_id) is JobState.COMPLETED, jobs.get_job(r, keys, job_id).reason
    assert [e.index for e in results.read_results(r, keys, job_id)] == list(range(n))
    assert _episodes(r, keys, job_id) == n
    assert not [u for u in units.iter_units(r, keys) if u.job_id == job_id]


@pytest.mark.slow
def test_a_job_whose_pool_nobody_serves_does_not_block_the_next(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    with procs(settings, tmp_path) as p:
        # --max-deliveries 1: handing a unit back must not count as a delivery
        p.cli("sim", "serve", "--num-envs", "1", "--max-deliveries", "1", name="sim")
        wait_until(lambda: live_sim_workers(r, keys), 60, "the sim worker", p.procs)
        spec_a = JobSpec(task="CartPole-v1", pool="typo", episodes=6, num_envs=1, shard_size=2)
        job_a = jobs.submit(r, keys, spec_a)
        wait_until(
            lambda: _state(r, keys, job_a) is JobState.WAITING_FOR_POOL, 30, "job A to wait",
            p.procs,
        )  # fmt: skip
        _serve_pool(p, "served")
        job_b = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="served", episodes=4))
        wait_until(
            lambda: _state(r, keys, job_b).terminal, 60, "job B to end while A waits", p.procs
        )
        _completed_once(r, keys, job_b, 4)
        waiting = jobs.get_job(r, keys, job_a)
        assert waiting.state is JobState.WAITING_FOR_POOL
        assert "arena-eval policy serve --pool typo" in waiting.reason
        _serve_pool(p, "typo")
        wait_until(lambda: _state(r, keys, job_a).terminal, 60, "job A once served", p.procs)
        _completed_once(r, keys, job_a, 6)
        assert r.xpending(keys.units(), SIM_GROUP)["pending"] == 0


@pytest.mark.slow
def test_sigterm_while_waiting_on_a_dead_pool_hands_the_unit_back_at_once(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    with procs(settings, tmp_path) as p:
        policy = _serve_pool(p, "dying")
        # A policy timeout no test would wait out: only the stop can end the wait.
        sim = p.cli("sim", "serve", "--num-envs", "1", "--policy-timeout", "3600", name="sim")
        wait_until(lambda: live_workers(r, keys, "dying"), 60, "the policy worker", p.procs)
        wait_until(lambda: live_sim_workers(r, keys), 60, "the sim worker", p.procs)
        spec = JobSpec(task="CartPole-v1", pool="dying", episodes=400, num_envs=1, shard_size=400)
        job_id = jobs.submit(r, keys, spec)
        wait_until(lambda: _episodes(r, keys, job_id) >= 3, 60, "some episodes", p.procs)
        policy.kill()  # mid-rollout: the sim's next request waits for an answer that never comes
        policy.wait(10)
        wait_until(
            lambda: not live_workers(r, keys, "dying"), 20, "the dead worker's heartbeat to lapse"
        )
        assert not _state(r, keys, job_id).terminal
        sim.send_signal(signal.SIGTERM)
        try:
            code = sim.wait(120)  # generous; without the fix the wait lasts an hour
        except subprocess.TimeoutExpired:
            pytest.fail("the sim worker ignored SIGTERM while waiting for a dead pool")
        assert code == 0, p.log_of(sim)
        # handed back at once: on the stream, leased by nobody
        assert [u for u in units.iter_units(r, keys) if u.job_id == job_id]
        assert r.xpending(keys.units(), SIM_GROUP)["pending"] == 0
        _serve_pool(p, "dying")
        p.cli("sim", "serve", "--num-envs", "1", name="sim2")
        wait_until(lambda: _state(r, keys, job_id).terminal, 120, "the job to complete", [])
        _completed_once(r, keys, job_id, 400)


def test_a_pool_that_lost_its_workers_is_not_called_live(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    policy = PolicyWorker("fading", ZeroPolicy(action_shape="1x1"), settings)
    sim = SimWorker(settings, num_envs=1, block_ms=200, policy_timeout_s=0.5, pool_poll_s=0.1)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (policy, sim)]
    for t in threads:
        t.start()
    try:
        n = 20_000  # far more than this test lets run: the job is still running at its end
        spec = JobSpec(task="CartPole-v1", pool="fading", episodes=n, num_envs=1, shard_size=n)
        job_id = jobs.submit(r, keys, spec)
        wait_until(lambda: _episodes(r, keys, job_id) >= 3, 30, "some episodes")
        policy.stop()  # its last worker leaves mid-job
        threads[0].join(10)
        wait_until(
            lambda: (
                "no live policy worker serves pool 'fading'" in jobs.get_job(r, keys, job_id).reason
            ),
            30,
            "the job to say that nobody serves the pool",
        )
        job = jobs.get_job(r, keys, job_id)
        assert "live worker" not in job.reason.replace("no live policy worker", "")
        assert not job.state.terminal  # waiting, not failed as a hung pool
        # a worker comes back: the job runs on, and its stale hint is gone
        policy = PolicyWorker("fading", ZeroPolicy(action_shape="1x1"), settings)
        threads.append(threading.Thread(target=policy.run, daemon=True))
        threads[-1].start()
        before = _episodes(r, keys, job_id)
        wait_until(lambda: _episodes(r, keys, job_id) >= before + 3, 60, "more episodes")
        wait_until(lambda: jobs.get_job(r, keys, job_id).reason == "", 30, "the hint to clear")
        assert jobs.get_job(r, keys, job_id).state is JobState.RUNNING
    finally:
        sim.stop()
        policy.stop()
        for t in threads:
            t.join(10)


def test_bogus_vectorization_is_refused_at_start(settings: RedisSettings) -> None:
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    out = CliRunner().invoke(app, ["sim", "serve", "--burst", "--vectorization", "bogus"], env=env)
    assert out.exit_code == 2, out.output
    assert "bogus" in out.output and "sync" in out.output and "async" in out.output
    assert "sim worker" not in out.output  # it never started
    with pytest.raises(ConfigError, match="vectorization must be one of sync, async"):
        SimWorker(settings, vectorization="bogus")


def test_should_stop_interrupts_a_wait_for_an_answer(settings: RedisSettings) -> None:
    """A cancelled job or a stop signal must not wait out the policy timeout: the client
    polls ``should_stop`` while it waits, and gives up with PolicyInterrupted."""
    import numpy as np

    from arena_eval.broker.spec import PolicySpec
    from arena_eval.sim_worker.client import PolicyClient, PolicyInterrupted

    stop = threading.Event()
    client = PolicyClient(
        "nobody-answers", settings, timeout_s=120, handshake=False, should_stop=stop.is_set
    )
    client.spec = PolicySpec(name="silent", action_shape=(1, 1))
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    try:
        with pytest.raises(PolicyInterrupted, match="stopped waiting for pool 'nobody-answers'"):
            client.infer({"x": np.zeros((1, 1), np.float32)}, [0])
    finally:
        timer.cancel()
        client.close()

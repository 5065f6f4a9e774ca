"""Double-buffered rollout (``--overlap``): the same episodes, and failures that still surface.

Real Redis (the suite's), real Meta-World and CartPole, real policy workers in threads. The
determinism test runs with and without overlap and compares every episode's outcome with
one reference run (1 env, synchronous), so the two modes agree with each other; with
overlap it also checks that both lanes really sent requests; a recorded job holds the same
frames (each lane buffers its own slots) either way. The failure tests make the
*background* lane's request fail (its first request is the first one launched on the
background thread) and check that the error reaches the caller, that the overlap thread
ends, and, through a whole sim worker, that the unit is retried and then settled, and that
a stop during the background wait hands the unit back before the pool answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from arena_eval.broker import dataset, jobs, units
from arena_eval.broker.constants import SIM_GROUP
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec
from arena_eval.cli.stack_cmd import demo_stack, up_stack
from arena_eval.policy_worker.policy import Batch, Policy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyClient, RemotePolicyError
from arena_eval.sim_worker.config import SimWorkerConfig
from arena_eval.sim_worker.envs import make_env
from arena_eval.sim_worker.rollout import RolloutStats, Twin, run_episodes
from arena_eval.sim_worker.service import SimWorker
from tests.worker_procs import wait_until

pytest.importorskip("gymnasium")

MW_TASK = "metaworld/door-open-v3"
CARTPOLE = "CartPole-v1"
#: Meta-World episodes: long enough that returns and lengths differ by seed, short for a test.
MAX_STEPS = 60


class TrapPolicy(Policy):
    """Zero 2x1 chunks for CartPole; raises, or stalls ``stall_s``, on rows of ``trap``."""

    def __init__(self, trap: str, *, stall_s: float = 0.0) -> None:
        self.trap = trap
        self.stall_s = stall_s
        self.trapped = threading.Event()  # set once a request of ``trap`` came in
        self.released = threading.Event()  # set once a stalled request was answered

    def spec(self) -> PolicySpec:
        return PolicySpec(name="trap", action_shape=(2, 1))

    def infer(self, batch: Batch) -> np.ndarray:
        if self.trap in batch.episode_ids:
            self.trapped.set()
            if not self.stall_s:
                raise ValueError(f"trap policy refuses episode {self.trap}")
            time.sleep(self.stall_s)
            self.released.set()
        return np.zeros((batch.rows, 2, 1), np.float32)


@contextmanager
def _serve(settings: RedisSettings, pool: str, policy: Policy) -> Iterator[PolicyWorker]:
    worker = PolicyWorker(pool, policy, settings, max_wait_ms=0.5)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)


@pytest.fixture
def expert(settings: RedisSettings, r: redis.Redis) -> Iterator[str]:
    # depends on ``r``: the test's keys are deleted after the worker stops
    pytest.importorskip("metaworld")
    from arena_eval.policy_worker.builtins.metaworld_expert import MetaWorldExpertPolicy

    # chunks of 3: each lane's ChunkedPolicy buffers and refills its own chunks
    policy = MetaWorldExpertPolicy(task="door-open-v3", chunk=3)
    with _serve(settings, "mw-expert", policy):
        yield "mw-expert"


def _outcomes(episodes: list[EpisodeResult]) -> list[dict[str, Any]]:
    """Each episode's outcome, without who ran it or when."""
    drop = {"worker", "wall_s", "finished_at"}
    ordered = sorted(episodes, key=lambda e: e.index)
    return [{k: v for k, v in e.to_dict().items() if k not in drop} for e in ordered]


def _rollout(
    settings: RedisSettings,
    pool: str,
    task: str,
    slots: tuple[int, ...],
    indices: list[int],
    **kwargs: Any,
) -> tuple[list[EpisodeResult], list[PolicyClient]]:
    """Run ``indices``: one env of ``slots[0]`` slots, and with a second entry a twin lane."""
    episodes: list[EpisodeResult] = []

    def sink(batch: list[EpisodeResult], _stats: RolloutStats) -> None:
        episodes.extend(batch)

    clients = [PolicyClient(pool, settings, timeout_s=10) for _ in slots]
    envs = [make_env(task, n, max_steps=MAX_STEPS) for n in slots]
    try:
        twin = None
        if len(slots) == 2:
            twin = Twin(envs[1], ChunkedPolicy(clients[1], slots[1]))
        run_episodes(
            envs[0], ChunkedPolicy(clients[0], slots[0]), job_id="j", indices=indices,
            seed_of=lambda i: 500 + i, on_episodes=sink, worker="w", task=task,
            twin=twin, **kwargs,
        )  # fmt: skip
    finally:
        for env in envs:
            env.close()
        for c in clients:
            c.close()
    return episodes, clients


def _overlap_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("arena-overlap")]


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap"])
def test_metaworld_episodes_identical_with_and_without_overlap(
    settings: RedisSettings, expert: str, overlap: bool
) -> None:
    indices = list(range(9))
    reference, _ = _rollout(settings, expert, MW_TASK, (1,), indices)
    layouts = [(2, 2), (2, 1)] if overlap else [(4,), (3,)]
    for slots in layouts:
        got, clients = _rollout(settings, expert, MW_TASK, slots, list(reversed(indices)))
        assert _outcomes(got) == _outcomes(reference), slots
        if overlap:  # both lanes asked the pool: the rollout really was double-buffered
            assert all(c.requests_sent > 0 for c in clients)
    assert [e["index"] for e in _outcomes(reference)] == indices
    assert len({(e.length, e.return_) for e in reference}) > 5  # seeds really differ
    assert not _overlap_threads()


@pytest.mark.parametrize("trap", ["j:0", "j:7"], ids=["first-background", "later"])
def test_a_policy_error_in_either_lane_reaches_the_caller(
    settings: RedisSettings, r: redis.Redis, trap: str
) -> None:
    with _serve(settings, "trap", TrapPolicy(trap)):
        # a lost error would hang the loop until the 10 s client timeout: PolicyTimeout
        with pytest.raises(RemotePolicyError, match=f"refuses episode {trap}"):
            _rollout(settings, "trap", CARTPOLE, (2, 2), list(range(12)))
        assert not _overlap_threads()  # the background thread ended with the rollout


def test_a_background_timeout_retries_the_unit_then_fails_the_job_not_hangs(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    # episode 1 sits in the first lane, whose first request goes out on the background
    # thread; the pool stalls on it past the sim's timeout every time the unit runs
    stall = TrapPolicy("", stall_s=1.5)  # its trap is set once the job has an id
    with _serve(settings, "stall", stall):
        sim = SimWorker(
            settings, num_envs=4, overlap=True, block_ms=200, policy_timeout_s=0.5,
            max_policy_timeouts=2, pool_poll_s=0.1,
        )  # fmt: skip
        thread = threading.Thread(target=sim.run, daemon=True)
        thread.start()
        try:
            spec = JobSpec(task=CARTPOLE, pool="stall", episodes=8, num_envs=4, shard_size=8)
            job_id = jobs.submit(r, keys, spec)
            stall.trap = f"{job_id}:1"
            wait_until(lambda: jobs.get_job(r, keys, job_id).state.terminal, 60, "the job to end")
            job = jobs.get_job(r, keys, job_id)
            assert job.state is JobState.FAILED
            assert "did not answer 2 request(s) in a row" in job.reason, job.reason
            # the unit was settled, not left leased; the worker serves on
            wait_until(lambda: r.xpending(keys.units(), SIM_GROUP)["pending"] == 0, 10, "ack")
            assert not [u for u in units.iter_units(r, keys) if u.job_id == job_id]
            assert thread.is_alive()
        finally:
            sim.stop()
            thread.join(20)
        assert not thread.is_alive()
        assert not _overlap_threads()


def test_overlap_reaches_the_worker_from_sim_serve_up_demo_and_the_api(
    settings: RedisSettings,
) -> None:
    from tests.test_worker_config import _children, _parse, _sim_config

    assert SimWorkerConfig().overlap is False  # off unless asked for
    assert _sim_config(["sim", "serve", "--overlap"]).overlap is True
    assert _sim_config(["sim", "serve", "--no-overlap"]).overlap is False
    for argv, stack_of in ((["up"], up_stack), (["demo"], demo_stack)):
        quiet = _children(stack_of(settings, _parse(argv)), "sim")
        assert all("--overlap" not in a and "--no-overlap" not in a for a in quiet)
        on = _children(stack_of(settings, _parse([*argv, "--overlap"])), "sim")
        assert on and all(_sim_config(a).overlap for a in on), on
    assert SimWorker(settings, overlap=True).config.overlap is True


def test_a_stop_while_the_background_request_waits_hands_the_unit_back_at_once(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    stall = TrapPolicy("", stall_s=4.0)  # longer than the stop may take, shorter than teardown
    with _serve(settings, "stall", stall):
        sim = SimWorker(settings, num_envs=4, overlap=True, block_ms=200, policy_timeout_s=60)
        thread = threading.Thread(target=sim.run, daemon=True)
        thread.start()
        try:
            spec = JobSpec(task=CARTPOLE, pool="stall", episodes=8, num_envs=4, shard_size=8)
            job_id = jobs.submit(r, keys, spec)
            stall.trap = f"{job_id}:1"  # the first lane: its first request is the background one
            assert stall.trapped.wait(30), "the background request never reached the pool"
            sim.stop()
            thread.join(20)
            assert not thread.is_alive()
            assert not stall.released.is_set()  # stopped before the pool answered
        finally:
            sim.stop()
            thread.join(20)
        assert not _overlap_threads()
        # handed back: on the stream for the next worker, leased by nobody
        assert [u for u in units.iter_units(r, keys) if u.job_id == job_id]
        assert r.xpending(keys.units(), SIM_GROUP)["pending"] == 0
        assert not jobs.get_job(r, keys, job_id).state.terminal


def _recorded_job(
    settings: RedisSettings, r: redis.Redis, keys: Keys, root: Path, *, overlap: bool
) -> Any:
    """A recorded 6-episode Meta-World job on one in-process sim worker of 3 slots."""
    sim = SimWorker(settings, num_envs=3, overlap=overlap, block_ms=200, pool_poll_s=0.1)
    thread = threading.Thread(target=sim.run, daemon=True)
    thread.start()
    try:
        spec = JobSpec(
            task=MW_TASK, pool="mw-expert", episodes=6, num_envs=3, max_steps=30, seed=7,
            record="all", record_dir=str(root),
        )  # fmt: skip
        job_id = jobs.submit(r, keys, spec)
        wait_until(lambda: jobs.get_job(r, keys, job_id).state.terminal, 120, "the job to end")
        job = jobs.get_job(r, keys, job_id)
        assert job.state is JobState.COMPLETED, job.reason
    finally:
        sim.stop()
        thread.join(20)
    return dataset.read_dataset(str(root))


def test_an_overlapped_recording_holds_the_same_frames(
    settings: RedisSettings, r: redis.Redis, keys: Keys, expert: str, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    sync = _recorded_job(settings, r, keys, tmp_path / "sync", overlap=False)
    lanes = _recorded_job(settings, r, keys, tmp_path / "overlap", overlap=True)
    assert [e["episode_index"] for e in lanes.episodes] == list(range(6))
    assert [e["length"] for e in lanes.episodes] == [e["length"] for e in sync.episodes]
    assert sorted(lanes.frames) == sorted(sync.frames)
    for name, column in sync.frames.items():
        np.testing.assert_array_equal(lanes.frames[name], column, err_msg=name)
    assert lanes.frames["action"].any()  # the expert's actions, not zeros


def test_bench_overlap_measures_both_loops_in_one_run(settings: RedisSettings) -> None:
    pytest.importorskip("metaworld")
    from typer.testing import CliRunner

    from arena_eval.cli.app import app

    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    args = ["bench", "overlap", "--num-envs", "2", "--episodes", "2", "--max-steps", "5",
            "--rounds", "1", "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    result = json.loads(res.stdout)
    # figures only, no timing asserted: both loops ran and each sent requests
    assert result["sync_steps_per_s"] > 0 and result["overlap_steps_per_s"] > 0
    assert result["sync_round_trip_ms"] > 0 and result["overlap_round_trip_ms"] > 0
    rates = result["overlap_steps_per_s"] / result["sync_steps_per_s"]
    assert result["ratio"] == pytest.approx(rates, abs=0.02)
    assert result["policy_row_ms"] >= 0 and result["env_step_ms"] > 0

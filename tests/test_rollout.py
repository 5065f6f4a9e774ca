"""The rollout loop against a real pool (policy worker in a thread) and a real gymnasium env."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyClient
from arena_eval.sim_worker.envs import make_env
from arena_eval.sim_worker.rollout import RolloutStats, run_episodes

pytest.importorskip("gymnasium")  # CartPole: the [sim] extra

POOL = "zero-cartpole"
TASK = "CartPole-v1"  # Discrete(2): one action column; zero actions topple it in ~10 steps


@pytest.fixture
def client(settings: RedisSettings, r: redis.Redis) -> Iterator[PolicyClient]:
    # depends on ``r`` so that the test's keys are deleted after the worker stops
    worker = PolicyWorker(POOL, ZeroPolicy(action_shape="4x1"), settings, max_wait_ms=0.5)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with PolicyClient(POOL, settings, timeout_s=10) as c:
            yield c
    finally:
        worker.stop()
        thread.join(10)


def rollout(
    client: PolicyClient, num_envs: int, indices: list[int], **kwargs: Any
) -> tuple[list[EpisodeResult], list[RolloutStats]]:
    episodes: list[EpisodeResult] = []
    flushes: list[RolloutStats] = []

    def sink(batch: list[EpisodeResult], stats: RolloutStats) -> None:
        episodes.extend(batch)
        flushes.append(stats)

    max_steps = kwargs.pop("max_steps", None)
    with make_env(TASK, num_envs, max_steps=max_steps) as env:
        run_episodes(
            env, ChunkedPolicy(client, num_envs), job_id="j", indices=indices,
            seed_of=lambda i: 1000 + i, on_episodes=sink, worker="w", **kwargs,
        )  # fmt: skip
    return sorted(episodes, key=lambda e: e.index), flushes


def test_results_depend_only_on_the_seed(client: PolicyClient) -> None:
    one, _ = rollout(client, 1, list(range(7)))
    three, flushes = rollout(client, 3, list(reversed(range(7))))
    assert [e.index for e in one] == list(range(7))
    assert [e.seed for e in one] == [1000 + i for i in range(7)]
    assert [(e.length, e.return_) for e in one] == [(e.length, e.return_) for e in three]
    assert len({e.length for e in one}) > 1  # seeds really differ
    steps = sum(f.steps for f in flushes)
    assert steps == sum(e.length for e in three)  # idle slots are not counted
    requests = sum(f.requests for f in flushes)
    assert 0 < requests < steps  # 4-step chunks: far fewer requests than steps
    assert sum(f.hist.total for f in flushes) == requests
    assert all(f.sums.get("sum:round_trip_ms", 0) > 0 for f in flushes if f.requests)


def test_max_steps_truncates_and_stop_aborts(client: PolicyClient) -> None:
    short, _ = rollout(client, 2, [0, 1, 2], max_steps=3)
    assert [e.length for e in short] == [3, 3, 3]
    assert not any(e.success for e in short)
    calls = {"n": 0}

    def stop_after_two_steps() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    stopped, _ = rollout(client, 2, list(range(10)), should_stop=stop_after_two_steps)
    assert stopped == []

"""A policy defined here sees every row's task and instruction, row-aligned, in batches that
mix two tasks coming from two sim workers running one suite job.

Two real ``SimWorker``s (threads, each its own Redis connections and reply stream) take the
two one-task units of a two-task suite at the same time, so one pool gets rows of both tasks
at once; the policy is slow enough (a few ms, like a forward pass) that requests queue up
behind it and the next batch holds both.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis

from arena_eval.broker import jobs, results
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.policy import Batch, InferResult, Policy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.service import SimWorker

pytest.importorskip("metaworld")

DOOR, DRAWER = "metaworld/door-open-v3", "metaworld/drawer-open-v3"
INSTRUCTION = {DOOR: "open the door", DRAWER: "open the drawer"}


class RecordingPolicy(Policy):
    """Needs an instruction; keeps each batch's (episode id, task, instruction, step) rows."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str, str, int]]] = []
        self.lock = threading.Lock()

    def spec(self) -> PolicySpec:
        return PolicySpec(name="recording", action_shape=(1, 4), needs_instruction=True)

    def infer(self, batch: Batch) -> InferResult:
        rows = list(
            zip(batch.episode_ids, batch.tasks, batch.instructions, batch.steps.tolist(),
                strict=True)
        )  # fmt: skip
        with self.lock:
            self.batches.append(rows)
        time.sleep(0.004)  # a forward pass: requests from the other sim queue up behind it
        return np.zeros((batch.rows, 1, 4), np.float32)


def test_batches_mix_two_tasks_from_two_sim_workers_with_each_rows_context(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    policy = RecordingPolicy()
    pool_worker = PolicyWorker("vla", policy, settings)
    pool_thread = threading.Thread(target=pool_worker.run, daemon=True)
    pool_thread.start()
    spec = JobSpec(task="", tasks=(DOOR, DRAWER), pool="vla", episodes=1, max_steps=40,
                   num_envs=1, shard_size=1)  # fmt: skip
    job_id = jobs.submit(r, keys, spec)
    sims = [SimWorker(settings, num_envs=1, block_ms=100) for _ in range(2)]
    threads = [threading.Thread(target=s.run, kwargs={"burst": True}) for s in sims]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        pool_worker.stop()
        pool_thread.join(10)
    assert jobs.get_job(r, keys, job_id).state is JobState.COMPLETED
    task_of = {f"{job_id}:{e.index}": e.task for e in results.read_results(r, keys, job_id)}
    assert sorted(task_of.values()) == [DOOR, DRAWER]
    assert {s.units_done for s in sims} == {1}  # each sim worker ran one task's unit
    mixed = [b for b in policy.batches if {task for _e, task, _i, _s in b} == {DOOR, DRAWER}]
    assert mixed, f"no batch mixed the two tasks in {len(policy.batches)} batches"
    steps: dict[str, list[int]] = {}
    for batch in policy.batches:
        for episode_id, task, instruction, step in batch:
            assert task == task_of[episode_id]  # row-aligned: each row its own episode's task
            assert instruction == INSTRUCTION[task]
            steps.setdefault(episode_id, []).append(step)
    for episode_steps in steps.values():  # and its own step count, in order
        assert episode_steps == sorted(episode_steps) and episode_steps[0] == 0

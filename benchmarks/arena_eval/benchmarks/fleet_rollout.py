"""The one rollout loop every ``bench fleet`` configuration runs, and its two non-fabric clients.

Why one loop: the comparison is about where the model sits (in the process, behind a
one-request-at-a-time ZeroMQ server, behind a pool), not about how episodes are stepped.
So the in-process run (a) and each seed-style sim (b) drive the sim worker's own rollout
(``run_episodes``: the same slots, seeds, resets and chunk buffers as a fabric job), only
with a different client under ``ChunkedPolicy``:

* ``DirectClient`` calls the policy in this process, timing each call (the model's busy
  time, as a policy worker counts ``infer_s``);
* ``SeedClient`` sends the observations to the seed's REP server (msgpack, arrays as
  np.save bytes: ``zmq_baseline``) and waits for the answer.

Both have the part of ``PolicyClient``'s interface that ``ChunkedPolicy`` and the lane use
(``spec``, ``connect``, ``infer``, ``last_timing``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.metrics import SIM_MS_FIELD, SUM_PREFIX
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.policy import Batch, Policy
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyClient
from arena_eval.sim_worker.envs.base import VectorEnv
from arena_eval.sim_worker.rollout import RolloutStats, run_episodes

ROUND_TRIP = f"{SUM_PREFIX}round_trip_ms"


@dataclass
class ModelClock:
    """Seconds inside the model's forward pass, the passes and their rows."""

    infer_s: float = 0.0
    batches: int = 0
    rows: int = 0

    def timed(self, policy: Policy, obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = Batch.of(obs)
        t0 = time.perf_counter()
        actions = policy.infer(batch)
        self.infer_s += time.perf_counter() - t0
        self.batches += 1
        self.rows += batch.rows
        return np.asarray(actions)


class DirectClient:
    """The policy called in this process: what a one-process evaluation does."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.spec: PolicySpec | None = policy.spec()
        self.clock = ModelClock()
        self.last_timing: dict[str, float] = {}

    def connect(self) -> PolicySpec:
        return self.policy.spec()

    def infer(self, obs: dict[str, np.ndarray], ids: Sequence[str], **_context: Any) -> np.ndarray:
        t0 = time.perf_counter()
        actions = self.clock.timed(self.policy, dict(obs))
        self.last_timing = {"round_trip_ms": (time.perf_counter() - t0) * 1e3}
        return actions


class SeedClient:
    """A REQ socket to the seed's one-request-at-a-time server (``zmq_baseline.serve``)."""

    def __init__(self, port: int, spec: PolicySpec) -> None:
        import zmq

        from arena_eval.benchmarks.zmq_baseline import pack, unpack

        self._pack, self._unpack = pack, unpack
        self.spec: PolicySpec | None = spec
        self.last_timing: dict[str, float] = {}
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.setsockopt(zmq.RCVTIMEO, 60_000)  # a dead server fails the sim, not hangs it
        self._sock.connect(f"tcp://127.0.0.1:{port}")

    def connect(self) -> PolicySpec:
        assert self.spec is not None
        return self.spec

    def infer(self, obs: dict[str, np.ndarray], ids: Sequence[str], **_context: Any) -> np.ndarray:
        t0 = time.perf_counter()
        self._sock.send(self._pack({b"obs": dict(obs)}, "seed"), copy=False)
        reply = self._unpack(self._sock.recv(copy=False).buffer, "seed")
        self.last_timing = {"round_trip_ms": (time.perf_counter() - t0) * 1e3}
        return np.asarray(reply[b"actions"])

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


@dataclass
class RolloutFigures:
    """What one rollout did: episodes, their summed length, env steps, seconds stepping the
    env, requests and their summed round trips, and its wall time."""

    episodes: int = 0
    length_sum: int = 0
    steps: int = 0
    sim_ms: float = 0.0
    requests: int = 0
    round_trip_ms: float = 0.0
    wall_s: float = 0.0
    finished_at: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {
            "episodes": self.episodes, "length_sum": self.length_sum, "steps": self.steps,
            "sim_ms": round(self.sim_ms, 3), "requests": self.requests,
            "round_trip_ms": round(self.round_trip_ms, 3), "wall_s": round(self.wall_s, 4),
            "finished_at": self.finished_at, **self.extra,
        }  # fmt: skip


def rollout(
    env: VectorEnv, client: DirectClient | SeedClient, indices: Sequence[int], task: str
) -> RolloutFigures:
    """Run episodes ``indices`` (seed = index, as a job with seed 0) through the sim worker's
    rollout loop with ``client`` under its chunk buffers; the clock starts at the first reset."""
    out = RolloutFigures()

    def sink(batch: list[EpisodeResult], stats: RolloutStats) -> None:
        out.episodes += len(batch)
        out.length_sum += sum(e.length for e in batch)
        out.steps += stats.steps
        out.requests += stats.requests
        out.sim_ms += stats.sums.get(SIM_MS_FIELD, 0.0)
        out.round_trip_ms += stats.sums.get(ROUND_TRIP, 0.0)

    # the duck-typed client has every PolicyClient member ChunkedPolicy and the lane use
    policy = ChunkedPolicy(cast(PolicyClient, client), env.num_envs, task=task)
    t0 = time.perf_counter()
    run_episodes(
        env, policy, job_id="fleet", indices=list(indices), seed_of=lambda i: i,
        on_episodes=sink, task=task,
    )  # fmt: skip
    out.wall_s = time.perf_counter() - t0
    out.finished_at = time.time()
    return out

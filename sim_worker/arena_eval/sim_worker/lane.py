"""A lane: one env and its chunked policy, taking episodes from a queue shared with other lanes.

Why a lane apart from the loop that drives it: a rollout step is two halves that touch
different things. ``decide`` asks the policy for the lane's next actions (it may block on a
request to the pool) and reads only the lane's own observations and slots; ``advance`` steps
the lane's env with those actions, keeps the episode bookkeeping, hands finished episodes to
the sinks and starts the next ones from the shared queue. The synchronous loop calls the two
halves back to back on one lane; the overlapped loop (``overlap.py``) runs one lane's
``decide`` on a background thread while the main thread runs the other lane's ``advance``.
Everything shared between lanes (the episode queue, the stats, the sinks) is touched only
by ``advance`` and ``note``, so only by the main thread.

Slots and a queue instead of "reset all, run all, repeat": episodes end at different steps
(Meta-World terminates at success). A slot that finishes takes the next episode index
right away, with that episode's seed, so the slots stay busy and the result of episode
``i`` depends only on ``i``'s seed, never on which slot, lane or worker ran it. Slots with
nothing left to run are inactive: they get no policy rows and their env rows are ignored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena_eval.broker.episode import EpisodeResult, finite
from arena_eval.broker.metrics import SIM_MS_FIELD, SUM_PREFIX, TIMING_FIELDS, LatencyHistogram
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.envs.base import VectorEnv
from arena_eval.sim_worker.recording.capture import Trajectory, TrajectoryBuffer


@dataclass
class RolloutStats:
    """Work done since the last flush: counters, timing sums, latency histogram."""

    steps: int = 0
    requests: int = 0
    rows: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    hist: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add_request(self, timing: dict[str, float], rows: int) -> None:
        self.requests += 1
        self.rows += rows
        for name in TIMING_FIELDS:
            if name in timing:
                key = SUM_PREFIX + name
                self.sums[key] = self.sums.get(key, 0.0) + float(timing[name])
        if "round_trip_ms" in timing:
            self.hist.add(float(timing["round_trip_ms"]))

    def add_sim(self, seconds: float) -> None:
        self.sums[SIM_MS_FIELD] = self.sums.get(SIM_MS_FIELD, 0.0) + seconds * 1e3

    def counters(self) -> dict[str, int]:
        return {"steps": self.steps, "requests": self.requests, "rows": self.rows,
                **self.hist.fields()}  # fmt: skip

    def take(self) -> RolloutStats:
        """Return the accumulated stats and start afresh."""
        out = RolloutStats(self.steps, self.requests, self.rows, self.sums, self.hist)
        self.steps = self.requests = self.rows = 0
        self.sums = {}
        self.hist = LatencyHistogram()
        return out


#: Called with (finished episode results, stats since the last call).
EpisodeSink = Callable[[list[EpisodeResult], RolloutStats], None]
#: Called with (result, frames) of each ended episode that was buffered, before ``EpisodeSink``.
RecordSink = Callable[[list[tuple[EpisodeResult, Trajectory]]], None]


@dataclass
class Shared:
    """What the lanes of one rollout share: the episode queue, the context every row carries,
    the stats and the sinks. Touched only from the thread that runs ``Lane.advance``."""

    job_id: str
    todo: deque[int]
    seed_of: Callable[[int], int]
    on_episodes: EpisodeSink
    worker: str = ""
    task: str = ""
    instruction: str = ""
    hidden: Collection[str] = ()
    progress: Callable[[int], None] | None = None
    on_recorded: RecordSink | None = None
    stats: RolloutStats = field(default_factory=RolloutStats)
    finished: int = 0


@dataclass
class Decision:
    """A lane's actions for one step, and the request that fetched them (if one was sent)."""

    actions: np.ndarray
    timing: dict[str, float] | None
    rows: int


class Slots:
    """Per-slot episode state as arrays, so per-step bookkeeping is a few numpy ops."""

    def __init__(self, n: int) -> None:
        self.index = np.full(n, -1, np.int64)  # episode index, -1 when idle
        self.seed = np.zeros(n, np.int64)
        self.ret = np.zeros(n, np.float64)
        self.length = np.zeros(n, np.int64)
        self.started = np.zeros(n, np.float64)
        self.final: dict[str, np.ndarray] = {}
        self.peak: dict[str, np.ndarray] = {}

    @property
    def active(self) -> np.ndarray:
        return self.index >= 0

    def begin(self, k: int, index: int, seed: int, now: float) -> None:
        self.index[k], self.seed[k], self.started[k] = index, seed, now
        self.ret[k] = 0.0
        self.length[k] = 0
        for arr in (*self.final.values(), *self.peak.values()):
            arr[k] = np.nan

    def record(self, active: np.ndarray, reward: np.ndarray, metrics: dict[str, Any]) -> None:
        self.ret[active] += reward[active]
        self.length[active] += 1
        for name, values in metrics.items():
            if name not in self.final:
                self.final[name] = np.full(self.index.size, np.nan)
                self.peak[name] = np.full(self.index.size, np.nan)
            seen = active & np.isfinite(values)
            self.final[name][seen] = values[seen]
            self.peak[name][seen] = np.fmax(self.peak[name][seen], values[seen])

    def result(self, k: int, success: bool, worker: str, now: float, task: str) -> EpisodeResult:
        metrics: dict[str, float | None] = {}
        for name in sorted(self.final):
            metrics[name] = finite(self.final[name][k])
            metrics[f"max_{name}"] = finite(self.peak[name][k])
        return EpisodeResult(
            index=int(self.index[k]),
            seed=int(self.seed[k]),
            success=success,
            return_=finite(self.ret[k]),
            length=int(self.length[k]),
            metrics=metrics,
            worker=worker,
            wall_s=round(now - float(self.started[k]), 4),
            finished_at=now,
            task=task,
        )


class Lane:
    """One env, its chunked policy and its slots' episodes (see the module docstring)."""

    def __init__(
        self,
        env: VectorEnv,
        policy: ChunkedPolicy,
        shared: Shared,
        capture: TrajectoryBuffer | None = None,
    ) -> None:
        self.env = env
        self.policy = policy
        self.shared = shared
        self.capture = capture
        self.slots = Slots(env.num_envs)
        self.obs: dict[str, np.ndarray] = {}

    @property
    def busy(self) -> bool:
        """Some slot still runs an episode."""
        return bool(self.slots.active.any())

    def start(self) -> None:
        """Give every slot an episode from the queue (if any) and reset the env."""
        t_sim = time.perf_counter()
        self.obs = self._start(range(self.env.num_envs), first=True)
        self.shared.stats.add_sim(time.perf_counter() - t_sim)

    def will_request(self) -> bool:
        """Whether ``decide`` would send a request (else it returns at once)."""
        return self.policy.will_request(self._ids(), self.slots.active)

    def _ids(self) -> list[str]:
        job_id = self.shared.job_id
        return [f"{job_id}:{i}" if i >= 0 else "" for i in self.slots.index.tolist()]

    def decide(self) -> Decision:
        """The actions for this lane's next step; may block on one request to the pool.

        Reads only this lane's state, so it may run on another thread than ``advance`` of
        another lane (never of this one).
        """
        sh, policy = self.shared, self.policy
        ids = self._ids()
        requests, rows = policy.requests, policy.rows_requested
        obs = self.obs
        sent = {k: v for k, v in obs.items() if k not in sh.hidden} if sh.hidden else obs
        actions = policy.act(
            sent, ids, active=self.slots.active, task=sh.task, instruction=sh.instruction
        )
        if policy.requests == requests:
            return Decision(actions, None, 0)
        return Decision(actions, dict(policy.client.last_timing), policy.rows_requested - rows)

    def advance(self, decision: Decision) -> None:
        """Step the env with ``decision``; hand over ended episodes and start the next ones."""
        sh, slots, capture = self.shared, self.slots, self.capture
        if decision.timing is not None:
            sh.stats.add_request(decision.timing, decision.rows)
        active = slots.active
        if capture is not None:
            capture.observe(active, self.obs, decision.actions)
        t_sim = time.perf_counter()
        result = self.env.step(decision.actions)
        sh.stats.add_sim(time.perf_counter() - t_sim)
        self.obs = result.obs
        if capture is not None:
            capture.outcome(active, result.reward, result.done, result.success)
        sh.stats.steps += int(active.sum())
        slots.record(active, result.reward, result.metrics)
        ended = np.flatnonzero(result.done & active).tolist()
        if not ended:
            return
        now = time.time()
        batch = [slots.result(k, bool(result.success[k]), sh.worker, now, sh.task) for k in ended]
        sh.finished += len(batch)
        if capture is not None:
            _hand_over(capture, ended, batch, sh.on_recorded)
        sh.on_episodes(batch, sh.stats.take())
        if sh.progress is not None:
            sh.progress(sh.finished)
        slots.index[ended] = -1
        t_sim = time.perf_counter()
        self.obs = self._start(ended)
        sh.stats.add_sim(time.perf_counter() - t_sim)

    def _start(self, free: Sequence[int], *, first: bool = False) -> dict[str, np.ndarray]:
        """Give each free slot the next episode (if any) and reset those slots in one call."""
        sh, slots = self.shared, self.slots
        ids: list[int] = []
        now = time.time()
        for k in free:
            if not sh.todo:
                break
            index = sh.todo.popleft()
            slots.begin(k, index, sh.seed_of(index), now)
            if self.capture is not None:
                self.capture.begin(k, index)
            ids.append(k)
        if ids or first:
            return self.env.reset(np.array(ids, np.int64), slots.seed[ids])
        return self.obs


def _hand_over(
    capture: TrajectoryBuffer,
    ended: Sequence[int],
    batch: Sequence[EpisodeResult],
    on_recorded: RecordSink | None,
) -> None:
    """Take the ended slots' frames out of ``capture`` and give the buffered ones away."""
    frames = [(res, capture.finish(k)) for k, res in zip(ended, batch, strict=True)]
    kept = [(res, traj) for res, traj in frames if traj is not None]
    if kept and on_recorded is not None:
        on_recorded(kept)

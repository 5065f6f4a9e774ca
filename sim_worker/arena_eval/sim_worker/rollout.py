"""Run a list of episodes through a VectorEnv with a ChunkedPolicy.

Why slots and a queue instead of "reset all, run all, repeat": episodes end
at different steps (Meta-World terminates at success). A slot that finishes
takes the next episode index right away, with that episode's seed, so the
E slots stay busy and the result of episode ``i`` depends only on ``i``'s
seed, never on which slot or worker ran it. Slots with nothing left to run
are inactive: they get no policy rows and their env rows are ignored.

Every policy row carries its context (``ChunkedPolicy``): the episode id
``job:index``, its step, the start flag, and the rollout's one task and
instruction, so a pool can batch rows of many tasks together.

With a ``TrajectoryBuffer`` (``--record``/``--video``), each step's observation, action,
reward and flags are kept per slot, and an ended episode's frames go to ``on_recorded``
before its result goes to ``on_episodes``: the recording is on disk before the result that
marks the episode done.

The loop touches Redis only through the policy request itself; finished
episodes and the per-request timings are handed to ``on_episodes`` (the sim
worker flushes them in one pipelined round trip) once per step in which at
least one episode ended.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena_eval.broker.dataset import is_image
from arena_eval.broker.episode import EpisodeResult, finite
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.metrics import SIM_MS_FIELD, SUM_PREFIX, TIMING_FIELDS, LatencyHistogram
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.envs.base import VectorEnv
from arena_eval.sim_worker.recording.capture import Trajectory, TrajectoryBuffer


def spec_mismatch(
    env: VectorEnv,
    spec: PolicySpec,
    job: JobSpec,
    *,
    instruction: str = "",
    hidden: Collection[str] = (),
) -> str | None:
    """Why the pool cannot drive this env (None if it can); checked before any request.

    ``instruction`` is the one the rollout would send: a pool whose policy
    ``needs_instruction`` cannot be driven without one. ``hidden`` observation keys are
    not sent to the pool (``filmed_only``).
    """
    if not spec.serves_task(job.task):
        return (
            f"pool {job.pool!r} serves policy {spec.name!r} for tasks {spec.describe_tasks()}, "
            f"not task {job.task!r}; submit the job to a pool that serves that task "
            "(`arena-eval pools` lists them) or start one with `arena-eval policy serve`"
        )
    if env.action_dim() != spec.action_dim:
        return (
            f"task {job.task!r} takes {env.action_dim()}-dim actions but pool {job.pool!r} "
            f"(policy {spec.name!r}) returns {spec.action_dim}-dim actions"
        )
    if spec.needs_instruction and not instruction:
        return (
            f"pool {job.pool!r} serves policy {spec.name!r}, which is language-conditioned "
            f"(needs_instruction), but task {job.task!r} has no instruction; give the job "
            "an instruction for the task (suites carry one per task)"
        )
    sample = {
        k: np.zeros((1, *f.shape), f.dtype)
        for k, f in env.observation_spec().items()
        if k not in hidden
    }
    try:
        spec.check_observations(sample)
    except SpecMismatch as exc:
        return f"observations of task {job.task!r} do not match pool {job.pool!r}: {exc}"
    return None


def filmed_only(env: VectorEnv, spec: PolicySpec, job: JobSpec) -> frozenset[str]:
    """Camera keys a job records (``--record``/``--video``) but its pool does not take: they
    are recorded and not sent, so a state policy's episodes can be watched (and a pixel
    policy trained on them) too."""
    if not job.recording or spec.observations is None:
        return frozenset()
    return frozenset(
        k for k, f in env.observation_spec().items()
        if k not in spec.observations and is_image(f.shape, f.dtype)
    )  # fmt: skip


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


class _Slots:
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


def run_episodes(
    env: VectorEnv,
    policy: ChunkedPolicy,
    *,
    job_id: str,
    indices: Sequence[int],
    seed_of: Callable[[int], int],
    on_episodes: EpisodeSink,
    should_stop: Callable[[], bool] = lambda: False,
    worker: str = "",
    progress: Callable[[int], None] | None = None,
    task: str = "",
    instruction: str = "",
    capture: TrajectoryBuffer | None = None,
    on_recorded: RecordSink | None = None,
    hidden: Collection[str] = (),
) -> int:
    """Run episodes ``indices`` on ``env``; return how many finished (stops early on request).

    Each result goes to ``on_episodes`` as an ``EpisodeResult`` (``broker/episode.py``)
    with ``task`` set. ``should_stop`` is polled once per step (keep it cheap: an Event,
    not a Redis call). ``task`` and ``instruction`` go with every policy row (one task
    per rollout; the unit runner passes the job's task and its instruction). ``capture``
    buffers frames of the episodes it keeps; they go to ``on_recorded`` when they end.
    ``hidden`` observation keys are recorded but not sent to the policy.
    """
    todo = deque(indices)
    if not todo:
        return 0
    slots = _Slots(env.num_envs)
    stats = RolloutStats()
    finished = 0
    t_sim = time.perf_counter()
    obs = _start(env, slots, range(env.num_envs), todo, seed_of, capture=capture)
    stats.add_sim(time.perf_counter() - t_sim)
    while slots.active.any():
        if should_stop():
            return finished
        active = slots.active
        ids = [f"{job_id}:{i}" if i >= 0 else "" for i in slots.index.tolist()]
        requests, rows = policy.requests, policy.rows_requested
        sent = {k: v for k, v in obs.items() if k not in hidden} if hidden else obs
        actions = policy.act(sent, ids, active=active, task=task, instruction=instruction)
        if policy.requests != requests:
            stats.add_request(policy.client.last_timing, policy.rows_requested - rows)
        if capture is not None:
            capture.observe(active, obs, actions)
        t_sim = time.perf_counter()
        result = env.step(actions)
        stats.add_sim(time.perf_counter() - t_sim)
        obs = result.obs
        if capture is not None:
            capture.outcome(active, result.reward, result.done, result.success)
        stats.steps += int(active.sum())
        slots.record(active, result.reward, result.metrics)
        ended = np.flatnonzero(result.done & active).tolist()
        if not ended:
            continue
        now = time.time()
        batch = [slots.result(k, bool(result.success[k]), worker, now, task) for k in ended]
        finished += len(batch)
        if capture is not None:
            _hand_over(capture, ended, batch, on_recorded)
        on_episodes(batch, stats.take())
        if progress is not None:
            progress(finished)
        slots.index[ended] = -1
        t_sim = time.perf_counter()
        obs = _start(env, slots, ended, todo, seed_of, obs, capture=capture)
        stats.add_sim(time.perf_counter() - t_sim)
    return finished


def _start(
    env: VectorEnv,
    slots: _Slots,
    free: Sequence[int],
    todo: deque[int],
    seed_of: Callable[[int], int],
    obs: dict[str, np.ndarray] | None = None,
    *,
    capture: TrajectoryBuffer | None = None,
) -> dict[str, np.ndarray]:
    """Give each free slot the next episode (if any) and reset those slots in one call."""
    ids: list[int] = []
    now = time.time()
    for k in free:
        if not todo:
            break
        index = todo.popleft()
        slots.begin(k, index, seed_of(index), now)
        if capture is not None:
            capture.begin(k, index)
        ids.append(k)
    if ids or obs is None:
        obs = env.reset(np.array(ids, np.int64), slots.seed[ids])
    return obs


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

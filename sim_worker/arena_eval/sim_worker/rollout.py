"""Run a list of episodes through a VectorEnv with a ChunkedPolicy: the rollout's entry point.

Why slots and a queue instead of "reset all, run all, repeat": episodes end
at different steps (Meta-World terminates at success). A slot that finishes
takes the next episode index right away, with that episode's seed, so the
E slots stay busy and the result of episode ``i`` depends only on ``i``'s
seed, never on which slot or worker ran it (the per-step work is ``lane.py``).

Every policy row carries its context (``ChunkedPolicy``): the episode id
``job:index``, its step, the start flag, and the rollout's one task and
instruction, so a pool can batch rows of many tasks together.

With a ``TrajectoryBuffer`` (``--record``/``--video``), each step's observation, action,
reward and flags are kept per slot, and an ended episode's frames go to ``on_recorded``
before its result goes to ``on_episodes``: the recording is on disk before the result that
marks the episode done.

With a ``Twin`` (``--overlap``), the slots are two lanes and the rollout is
double-buffered (``overlap.py``): one lane's request is in flight while the other
steps, and every episode's result is the one the synchronous loop gives.

The loop touches Redis only through the policy request itself; finished
episodes and the per-request timings are handed to ``on_episodes`` (the sim
worker flushes them in one pipelined round trip) once per step in which at
least one episode ended.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from arena_eval.broker.dataset import is_image
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.envs.base import VectorEnv
from arena_eval.sim_worker.lane import EpisodeSink, Lane, RecordSink, RolloutStats, Shared
from arena_eval.sim_worker.overlap import run_pair
from arena_eval.sim_worker.recording.capture import TrajectoryBuffer

__all__ = [
    "EpisodeSink",
    "RecordSink",
    "RolloutStats",
    "Twin",
    "filmed_only",
    "run_episodes",
    "spec_mismatch",
]


@dataclass(frozen=True)
class Twin:
    """The second lane of a double-buffered rollout: its env (the same task as the first,
    any number of slots), its chunked policy over a client of its own (a PolicyClient is
    not thread-safe), and its frame buffer when the job records."""

    env: VectorEnv
    policy: ChunkedPolicy
    capture: TrajectoryBuffer | None = None


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
    twin: Twin | None = None,
) -> int:
    """Run episodes ``indices`` on ``env``; return how many finished (stops early on request).

    Each result goes to ``on_episodes`` as an ``EpisodeResult`` (``broker/episode.py``)
    with ``task`` set. ``should_stop`` is polled once per step (keep it cheap: an Event,
    not a Redis call). ``task`` and ``instruction`` go with every policy row (one task
    per rollout; the unit runner passes the job's task and its instruction). ``capture``
    buffers frames of the episodes it keeps; they go to ``on_recorded`` when they end.
    ``hidden`` observation keys are recorded but not sent to the policy. With ``twin``
    (a second env, its own chunked policy over its own client, and its own capture) the
    rollout is double-buffered (``overlap.py``): the same episodes, the same results.
    """
    todo = deque(indices)
    if not todo:
        return 0
    shared = Shared(
        job_id=job_id, todo=todo, seed_of=seed_of, on_episodes=on_episodes, worker=worker,
        task=task, instruction=instruction, hidden=hidden, progress=progress,
        on_recorded=on_recorded,
    )  # fmt: skip
    lane = Lane(env, policy, shared, capture)
    lane.start()
    if twin is not None:
        other = Lane(twin.env, twin.policy, shared, twin.capture)
        other.start()
        run_pair(lane, other, should_stop)
        return shared.finished
    while lane.busy:
        if should_stop():
            return shared.finished
        lane.advance(lane.decide())
    return shared.finished

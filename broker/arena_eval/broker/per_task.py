"""Per-task results of a job and its suite score: what ``status``, ``results`` and reports show.

Why per task: a suite (Meta-World MT10, LIBERO-10) is reported task by task, and its headline
is the *mean over tasks* of the per-task success rates, not the pooled rate over episodes
(with equal episodes per task the two agree, but a job still running, or a task whose
episodes failed to run, would tilt a pooled rate toward the tasks that finished first).

* Per task: episodes, successes, success rate with its 95 % Wilson interval
  (``metrics.wilson_interval``), mean length and return, and steps/s: the task's env steps
  over the wall time its episodes took, summed (``sum(length) / sum(wall_s)``), i.e. how fast
  one env slot advanced that task, policy round trips included. It compares tasks on one
  job; the job's own throughput (all slots of all workers) is ``status``'s ``steps_per_s``.
* Suite score: the unweighted mean of the per-task rates over tasks with at least one
  episode. Its 95 % interval is the normal interval of a mean of independent proportions,
  ``var = sum_t p~_t (1 - p~_t) / (n_t + 4) / T**2``, with the Agresti-Coull estimate
  ``p~_t = (s_t + 2) / (n_t + 4)`` in the variance (so a task at 10/10 still carries
  uncertainty, as Wilson's interval does), centred on the raw mean and clipped to [0, 1].

Rows stored before episodes carried a task (``task == ""``) count for the job's first task
(a single-task job's only one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.metrics import Z_95, mean, ratio, wilson_interval

#: Columns of a per-task row (``results --tasks --format csv``, ``tasks`` in ``--json``).
TASK_COLUMNS = (
    "task", "episodes", "successes", "success_rate", "wilson_low", "wilson_high",
    "mean_length", "mean_return", "steps_per_s",
)  # fmt: skip


@dataclass(frozen=True)
class TaskSummary:
    """One task's figures in a job (see the module docstring for each definition)."""

    task: str
    episodes: int
    successes: int
    success_rate: float | None
    wilson_low: float
    wilson_high: float
    mean_length: float | None
    mean_return: float | None
    steps_per_s: float | None

    def to_dict(self) -> dict[str, object]:
        """The row, keys in ``TASK_COLUMNS`` order."""
        return asdict(self)


@dataclass(frozen=True)
class SuiteScore:
    """Mean over tasks of the per-task success rates, with its 95 % interval."""

    score: float | None
    low: float
    high: float
    tasks: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def task_of(episode: EpisodeResult, tasks: Sequence[str]) -> str:
    """The task an episode ran: its own, or the job's first for rows that predate tasks."""
    return episode.task or (tasks[0] if tasks else "")


def per_task(episodes: Sequence[EpisodeResult], tasks: Sequence[str]) -> list[TaskSummary]:
    """One summary per task, in ``tasks`` order (a task with no episode yet has 0 episodes);
    tasks found in rows but not in ``tasks`` (written by hand) follow, in order of index."""
    groups: dict[str, list[EpisodeResult]] = {t: [] for t in tasks}
    for e in episodes:
        groups.setdefault(task_of(e, tasks), []).append(e)
    return [summarize_task(task, eps) for task, eps in groups.items()]


def summarize_task(task: str, episodes: Sequence[EpisodeResult]) -> TaskSummary:
    """The figures of one task's episodes."""
    n = len(episodes)
    successes = sum(1 for e in episodes if e.success)
    low, high = wilson_interval(successes, n)
    timed = [e for e in episodes if e.wall_s is not None]
    wall = sum(float(e.wall_s or 0.0) for e in timed)
    return TaskSummary(
        task=task,
        episodes=n,
        successes=successes,
        success_rate=ratio(successes, n),
        wilson_low=low,
        wilson_high=high,
        mean_length=mean(float(e.length) for e in episodes),
        mean_return=mean(e.return_ for e in episodes),
        steps_per_s=ratio(sum(e.length for e in timed), wall) if wall > 0 else None,
    )


def suite_score(summaries: Sequence[TaskSummary], z: float = Z_95) -> SuiteScore:
    """Mean per-task success rate over tasks with episodes, and its interval (module doc)."""
    ran = [s for s in summaries if s.episodes > 0]
    if not ran:
        return SuiteScore(None, 0.0, 1.0, 0)
    t = len(ran)
    score = sum(s.successes / s.episodes for s in ran) / t
    var = 0.0
    for s in ran:
        adjusted = (s.successes + 2) / (s.episodes + 4)
        var += adjusted * (1 - adjusted) / (s.episodes + 4)
    half = z * math.sqrt(var) / t
    return SuiteScore(score, max(0.0, score - half), min(1.0, score + half), t)

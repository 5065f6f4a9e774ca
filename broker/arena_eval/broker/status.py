"""Read-side reports for the CLI: job status, results, job list, worker list.

Each function does the Redis reads for one command and returns plain,
JSON-ready dicts whose keys are the documented ``--json`` output, so the CLI
only renders and scripts get the same numbers the tables show. Status reads
counters and the histogram (O(1) in the number of episodes); only
``results_report`` reads every episode.

A job that is not moving gets a ``hint``: no live sim worker at all, or no
live policy worker on its pool (queued, or running on a pool that lost every
worker). Without it, ``queued`` forever would be a silent hang from the
user's side.

Every report reads data that anyone could have written with redis-cli, so
none of them raises on a bad field: each one goes to the caller's
``warnings`` list, naming its key and field, and the report carries on.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import redis

from arena_eval.broker import fleet, pool
from arena_eval.broker.compare import compare_episodes
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.job_view import JobView, list_job_views, read_job_view
from arena_eval.broker.jobs import JobSpec, JobState, latest_job_id
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import ratio, summarize_episodes, summarize_stats
from arena_eval.broker.per_task import per_task, suite_score
from arena_eval.broker.results import checked_stats, read_results, read_stats, read_workers


def resolve_job_id(r: redis.Redis, keys: Keys, job_id: str | None) -> str:
    """``job_id``, or the latest job's id when None."""
    return job_id or latest_job_id(r, keys)


def job_status(
    r: redis.Redis,
    keys: Keys,
    job_id: str | None = None,
    warnings: list[str] | None = None,
    *,
    tasks: bool = True,
) -> dict[str, Any]:
    """Everything ``arena-eval status`` shows, JSON-ready; bad fields go to ``warnings``.

    ``tasks`` adds the per-task rows and the suite score (``per_task_fields``); they read
    every stored result, so a progress poll that shows only totals leaves them out.
    """
    warnings = [] if warnings is None else warnings
    job = read_job_view(r, keys, resolve_job_id(r, keys, job_id), warnings)
    now = time.time()
    raw_stats = read_stats(r, keys, job.job_id)
    stats = summarize_stats(
        checked_stats(raw_stats, keys.job_stats(job.job_id), warnings), job.elapsed_s(now)
    )
    workers = read_workers(r, keys, job.job_id, warnings)
    out: dict[str, Any] = {
        **job.to_dict(),
        **stats,
        "progress": ratio(stats["episodes_done"], job.total),
        "elapsed_s": job.elapsed_s(now),
        "workers": [
            {"worker_id": w, "last_seen_s": round(max(0.0, now - t), 2)}
            for w, t in sorted(workers.items())
        ],
        "hint": _hint(r, keys, job),
    }
    if tasks:
        out.update(per_task_fields(job, read_results(r, keys, job.job_id, warnings)))
    return out


def per_task_fields(job: JobView, episodes: list[EpisodeResult]) -> dict[str, Any]:
    """``tasks``: one row per task of the job (``per_task.TASK_COLUMNS``); ``suite``: the
    mean over tasks with its interval (``per_task.suite_score``)."""
    names = job.valid_spec.tasks if job.valid_spec else tuple(job.spec.get("tasks") or ())
    rows = per_task(episodes, [str(t) for t in names])
    return {"tasks": [t.to_dict() for t in rows], "suite": suite_score(rows).to_dict()}


def _hint(r: redis.Redis, keys: Keys, job: JobView) -> str:
    if job.terminal or job.known_state is None:
        return ""
    if not fleet.live_sim_workers(r, keys):
        return "no live sim worker: start one with `arena-eval sim serve`"
    spec = job.valid_spec
    if spec is None or job.known_state is JobState.WAITING_FOR_POOL:
        return ""  # a waiting job's reason already says which pool it waits for
    if not pool.live_workers(r, keys, spec.pool):
        lost = " (it lost every worker)" if job.known_state is JobState.RUNNING else ""
        return (
            f"no live policy worker serves pool {spec.pool!r}{lost}; start one with "
            f"`arena-eval policy serve --pool {spec.pool} --policy ...`"
        )
    return ""


def results_report(
    r: redis.Redis, keys: Keys, job_id: str | None = None, warnings: list[str] | None = None
) -> dict[str, Any]:
    """Metrics over finished episodes plus every episode's result, sorted by index.

    ``job_id`` None means the latest job; results that do not parse go to ``warnings``.
    """
    warnings = [] if warnings is None else warnings
    job = read_job_view(r, keys, resolve_job_id(r, keys, job_id), warnings)
    episodes = read_results(r, keys, job.job_id, warnings)
    if job.valid_spec is not None:  # rows stored before tasks were recorded: the job's task
        episodes = [with_task(e, job.valid_spec) for e in episodes]
    return {
        "job_id": job.job_id,
        "state": job.state,
        "reason": job.reason,
        "spec": job.spec,
        "metrics": summarize_episodes(episodes),
        **per_task_fields(job, episodes),
        "episodes": [e.to_dict() for e in episodes],
    }


def with_task(episode: EpisodeResult, spec: JobSpec) -> EpisodeResult:
    """``episode`` with ``task`` and ``task_episode`` filled from the job if it lacks them."""
    if episode.task and episode.task_episode is not None:
        return episode
    if episode.index >= spec.total_episodes:
        return episode  # written by hand outside the job: shown as stored
    _pos, task, i = spec.locate(episode.index)
    return replace(episode, task=episode.task or task, task_episode=i)


def compare_report(
    r: redis.Redis, keys: Keys, job_a: str, job_b: str, warnings: list[str] | None = None
) -> dict[str, Any]:
    """``arena-eval compare``: job B against job A (``compare.compare_episodes``)."""
    warnings = [] if warnings is None else warnings
    views = [read_job_view(r, keys, j, warnings) for j in (job_a, job_b)]
    for view in views:
        if view.valid_spec is None:
            raise ArenaEvalError(
                f"job {view.job_id} has no readable spec; `arena-eval status {view.job_id}` "
                "shows what is stored"
            )
    spec_a, spec_b = (v.valid_spec for v in views)
    assert spec_a is not None and spec_b is not None
    out = compare_episodes(
        spec_a,
        read_results(r, keys, job_a, warnings),
        spec_b,
        read_results(r, keys, job_b, warnings),
    )
    jobs = [{"job_id": v.job_id, "state": v.state, "pool": v.spec.get("pool")} for v in views]
    return {"job_a": jobs[0], "job_b": jobs[1], **out}


def jobs_report(
    r: redis.Redis, keys: Keys, limit: int = 50, warnings: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per job, newest first; a job with bad fields is listed with them warned about."""
    warnings = [] if warnings is None else warnings
    rows = []
    for job, done, successes in list_job_views(r, keys, limit, warnings):
        rows.append(
            {
                "job_id": job.job_id,
                "task": _task_label(job),
                "pool": job.spec.get("pool"),
                "state": job.state,
                "reason": job.reason,
                "episodes_done": done,
                "total": job.total,
                "success_rate": ratio(successes, done),
                "created": job.created,
            }
        )
    return rows


def _task_label(job: JobView) -> Any:
    """The task of a single-task job; a suite's name (or ``N tasks``) for a suite."""
    spec = job.valid_spec
    if spec is None or len(spec.tasks) == 1:
        return job.spec.get("task")
    return spec.suite or f"{len(spec.tasks)} tasks"


def workers_report(r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Live sim workers and every pool's live policy workers."""
    return {
        "sim_workers": [w.to_dict() for w in fleet.live_sim_workers(r, keys)],
        "pools": [pool.describe_pool(r, keys, name) for name in pool.pool_names(r, keys)],
    }

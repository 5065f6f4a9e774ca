"""Read-side reports for the CLI: job status, results, job list, worker list.

Each function does the Redis reads for one command and returns plain,
JSON-ready dicts whose keys are the documented ``--json`` output, so the CLI
only renders and scripts get the same numbers the tables show. Status reads
counters and the histogram (O(1) in the number of episodes); only
``results_report`` reads every episode.

A job that is not moving gets a ``hint``: no live sim worker at all, or no
live policy worker on its pool. Without it, ``queued`` forever would be a
silent hang from the user's side.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from arena_eval.broker import fleet, pool
from arena_eval.broker.jobs import Job, JobState, get_job, latest_job_id, list_jobs
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import ratio, summarize_episodes, summarize_stats
from arena_eval.broker.results import read_results, read_stats, read_workers


def resolve_job_id(r: redis.Redis, keys: Keys, job_id: str | None) -> str:
    """``job_id``, or the latest job's id when None."""
    return job_id or latest_job_id(r, keys)


def job_status(r: redis.Redis, keys: Keys, job_id: str | None = None) -> dict[str, Any]:
    """Everything ``arena-eval status`` shows, JSON-ready."""
    job = get_job(r, keys, resolve_job_id(r, keys, job_id))
    now = time.time()
    stats = summarize_stats(read_stats(r, keys, job.job_id), job.elapsed_s(now))
    workers = read_workers(r, keys, job.job_id)
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
    return out


def _hint(r: redis.Redis, keys: Keys, job: Job) -> str:
    if job.state.terminal:
        return ""
    if not fleet.live_sim_workers(r, keys):
        return "no live sim worker: start one with `arena-eval sim serve`"
    if job.state is JobState.QUEUED and not pool.live_workers(r, keys, job.spec.pool):
        return (
            f"no live policy worker serves pool {job.spec.pool!r}; start one with "
            f"`arena-eval policy serve --pool {job.spec.pool} ...`"
        )
    return ""


def results_report(r: redis.Redis, keys: Keys, job_id: str) -> dict[str, Any]:
    """Metrics over finished episodes plus every episode's result, sorted by index."""
    job = get_job(r, keys, job_id)
    episodes = read_results(r, keys, job_id)
    return {
        "job_id": job.job_id,
        "state": job.state.value,
        "reason": job.reason,
        "spec": job.to_dict()["spec"],
        "metrics": summarize_episodes(episodes),
        "episodes": episodes,
    }


def jobs_report(r: redis.Redis, keys: Keys, limit: int = 50) -> list[dict[str, Any]]:
    """One row per job, newest first."""
    rows = []
    for job, done, successes in list_jobs(r, keys, limit):
        rows.append(
            {
                "job_id": job.job_id,
                "task": job.spec.task,
                "pool": job.spec.pool,
                "state": job.state.value,
                "reason": job.reason,
                "episodes_done": done,
                "total": job.total,
                "success_rate": ratio(successes, done),
                "created": job.created,
            }
        )
    return rows


def workers_report(r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Live sim workers and every pool's live policy workers."""
    return {
        "sim_workers": [w.to_dict() for w in fleet.live_sim_workers(r, keys)],
        "pools": [pool.describe_pool(r, keys, name) for name in pool.pool_names(r, keys)],
    }

"""What ``arena-eval report`` shows, gathered from Redis as plain JSON-ready data.

Why a separate data step: the report's figures are only as trustworthy as the numbers behind
them, so those numbers come from the same functions ``status``, ``results`` and ``compare``
use (one definition of every figure), and are gathered here, where Redis is read, into a dict
the renderer only draws. Plotting stays out of the broker and the workers (it is the
``[report]`` extra, used by the CLI), and a test can check the data without a browser.

Per job: its record (spec, state, times), one row per task (success with its 95 % Wilson
interval, episodes, mean length), every episode's task, length, success and finish time
(episode lengths, throughput over time), and from the stats hash the round-trip histogram and
where each request's time went: in the policy worker (decode, infer, encode), waiting in the
pool (queue: the batching window and a busy pool), in transport (the rest of the round trip:
client encode, Redis, the network), and, when the sim workers record it (``sum:sim_ms``), in
the simulator. Two jobs get the paired comparison too. A job submitted with ``--video N``
lists its episodes' mp4s (``videos``: where each is and what it shows), read from the
recording's episode markers when this machine can see ``record_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from arena_eval.broker import dataset, status
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.job_view import read_job_view
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import (
    BUCKETS_PER_OCTAVE,
    SIM_MS_FIELD,
    SUM_PREFIX,
    LatencyHistogram,
    summarize_stats,
)
from arena_eval.broker.results import checked_stats, read_stats

#: The parts of one request's round trip, as ``time_split`` names them, in drawing order.
SPLIT_PARTS = ("infer", "decode", "encode", "queue", "transport")


def report_data(
    r: redis.Redis, keys: Keys, job_ids: Sequence[str], warnings: list[str]
) -> dict[str, Any]:
    """Everything the report draws for ``job_ids`` (in that order), plus the comparison of
    the first two when exactly two are given. Bad fields go to ``warnings``."""
    jobs = [job_data(r, keys, job_id, warnings) for job_id in job_ids]
    comparison = None
    if len(job_ids) == 2:
        comparison = compare_data(r, keys, job_ids[0], job_ids[1], warnings)
    return {"generated": time.time(), "jobs": jobs, "comparison": comparison}


def job_data(r: redis.Redis, keys: Keys, job_id: str, warnings: list[str]) -> dict[str, Any]:
    """One job's record, per-task rows, episodes, latency histogram and time split."""
    view = read_job_view(r, keys, job_id, warnings)
    results = status.results_report(r, keys, job_id, warnings)
    stats = checked_stats(read_stats(r, keys, job_id), keys.job_stats(job_id), warnings)
    summary = summarize_stats(stats, view.elapsed_s())
    episodes = results["episodes"]
    return {
        "job_id": view.job_id,
        "state": view.state,
        "reason": view.reason,
        "spec": view.spec,
        "created": view.created,
        "started": view.started,
        "finished": view.finished,
        "total": view.total,
        "tasks": results["tasks"],
        "suite": results["suite"],
        "metrics": results["metrics"],
        "episodes": [_episode_row(e) for e in episodes],
        "latency": latency_buckets(LatencyHistogram.from_fields(stats)),
        "summary": summary,
        "split": time_split(stats),
        "videos": video_data(view.spec, warnings),
    }


#: Videos listed per job at most (the first N episodes of each task of a large suite).
MAX_VIDEOS = 200


def video_data(spec: dict[str, Any], warnings: list[str]) -> list[dict[str, Any]]:
    """The job's episode videos (``--video N``): episode, task, outcome, length, camera, the
    file's ``url`` and, when it is on this machine, its local ``path``. Episodes whose
    recording is not there (yet, or not visible from here) are left out."""
    record_dir, per_task = spec.get("record_dir"), spec.get("video") or 0
    if not isinstance(record_dir, str) or not record_dir or not isinstance(per_task, int):
        return []
    tasks, episodes = spec.get("tasks") or [spec.get("task")], int(spec.get("episodes") or 0)
    indices = [
        pos * episodes + i for pos in range(len(tasks)) for i in range(min(per_task, episodes))
    ]
    out: list[dict[str, Any]] = []
    try:
        store = dataset.DatasetStore(record_dir)
        for index in indices[:MAX_VIDEOS]:
            marker = store.marker(index)
            if marker is None:
                continue
            for camera in sorted(marker.get("videos") or {}):
                if not dataset.is_video_key(camera):
                    continue  # never a path out of the marker: it could point anywhere
                rel = dataset.video_path(index, camera)
                path = store.path(rel)
                url = Path(path).as_uri() if store.is_local else f"{record_dir.rstrip('/')}/{rel}"
                out.append({
                    "index": index, "task": marker.get("task"), "camera": camera,
                    "success": bool(marker.get("success")), "length": marker.get("length"),
                    "url": url,
                    "path": path if store.is_local else None,
                })  # fmt: skip
    except (ConfigError, OSError, ValueError) as exc:
        warnings.append(f"videos under {record_dir!r} could not be listed: {exc}")
    return out


def compare_data(
    r: redis.Redis, keys: Keys, job_a: str, job_b: str, warnings: list[str]
) -> dict[str, Any]:
    """The paired comparison of two jobs (``status.compare_report``: per task and overall)."""
    return status.compare_report(r, keys, job_a, job_b, warnings)


def _episode_row(episode: dict[str, Any]) -> dict[str, Any]:
    """What the figures need of an episode (``results_report`` has filled in its task)."""
    return {
        "index": episode.get("index"),
        "task": episode.get("task") or "",
        "success": bool(episode.get("success")),
        "length": episode.get("length"),
        "wall_s": episode.get("wall_s"),
        "finished_at": episode.get("finished_at"),
    }


def latency_buckets(hist: LatencyHistogram) -> list[dict[str, float]]:
    """The round-trip histogram as bars: each bucket's bounds (ms), midpoint and count."""
    out = []
    for bucket in sorted(hist.counts):
        count = hist.counts[bucket]
        if count <= 0:
            continue
        out.append(
            {
                "low_ms": 2.0 ** (bucket / BUCKETS_PER_OCTAVE),
                "high_ms": 2.0 ** ((bucket + 1) / BUCKETS_PER_OCTAVE),
                "ms": 2.0 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE),
                "count": float(count),
            }
        )
    return out


def time_split(stats: dict[str, float]) -> dict[str, Any]:
    """Where the job's time went, in total milliseconds over all its requests.

    ``infer``/``decode``/``encode`` are the policy worker's, ``queue`` is time in the pool
    before a worker took the request, ``transport`` is the rest of the round trip;
    ``sim`` is the simulators' time when recorded (``None`` otherwise). Per request means
    divide by ``requests``.
    """

    def total(name: str) -> float:
        return float(stats.get(SUM_PREFIX + name, 0.0))

    parts = {p: total(f"{p}_ms") for p in ("infer", "decode", "encode", "queue")}
    round_trip = total("round_trip_ms")
    parts["transport"] = max(0.0, round_trip - sum(parts.values()))
    sim = stats.get(SIM_MS_FIELD)
    return {
        "requests": int(stats.get("requests", 0)),
        "round_trip_ms": round_trip,
        "policy_ms": {p: parts[p] for p in SPLIT_PARTS},
        "sim_ms": None if sim is None else float(sim),
    }

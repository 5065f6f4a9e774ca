"""Per-episode results, written once, and a job's stats counters.

Why write-once: a unit can run twice (its worker died, or stalled past its
lease, after finishing some episodes). Each result is stored with HSETNX
under the episode index, and the counters that status reads (``episodes``,
``successes``, ``length_sum``, ``return_sum``) move in the same Lua script
only when the HSETNX wrote, so no episode is ever counted twice. In the same
round trip, the job's one transition script (``jobs.queue_completion``)
completes the job, once, the moment every episode has a result.

Each result is an :class:`~arena_eval.broker.episode.EpisodeResult`, stored as
the JSON that module defines, under its index in ``keys.job_results``.

The stats hash (``keys.job_stats``) is flushed by sim workers once per
finished episode, pipelined with the result, never per step:

    episodes, successes, length_sum, return_sum   write-once counters (above)
    steps                 env steps taken by active slots (incl. re-runs)
    requests, rows        policy requests and the rows they carried
    sum:<t>               sums of reply timings t in metrics.TIMING_FIELDS
    h:<bucket>            round-trip latency histogram (metrics.LatencyHistogram)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import redis

from arena_eval.broker.cluster import is_cluster, queue_script, wait_for_replicas
from arena_eval.broker.episode import BadEpisode, EpisodeResult
from arena_eval.broker.fields import as_text, number, warn_field
from arena_eval.broker.jobs import queue_completion
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import HIST_PREFIX

#: Replicas a cluster master must have copied new results to before a sim worker goes on
#: (``WAIT``); 0 turns it off. Lost results are re-run by ``reconcile`` either way: WAIT
#: makes that rare, at the cost measured in docs/architecture.md ("Failover").
ENV_WAIT_REPLICAS = "ARENA_WAIT_REPLICAS"
WAIT_TIMEOUT_MS = 200


def wait_replicas() -> int:
    """``ARENA_WAIT_REPLICAS`` (default 1; 0 = off)."""
    raw = os.environ.get(ENV_WAIT_REPLICAS, "1")
    return int(raw) if raw.isdigit() else 1


#: Fixed leading columns of ``results --format csv`` (then ``m.<metric>``, sorted).
#: ``task`` and ``task_episode`` came last, so the earlier columns keep their positions.
RESULT_COLUMNS = (
    "index", "seed", "success", "return", "length", "wall_s", "worker", "finished_at",
    "task", "task_episode",
)  # fmt: skip
_ARGS_PER_EPISODE = 5

# KEYS: results, stats, workers. ARGV: worker, now, n, then n x (index, json, success 0/1,
# length, return). Returns the number of episodes newly written.
_RECORD = f"""
local written = 0
for i = 0, tonumber(ARGV[3]) - 1 do
  local b = 4 + i * {_ARGS_PER_EPISODE}
  if redis.call('HSETNX', KEYS[1], ARGV[b], ARGV[b + 1]) == 1 then
    written = written + 1
    redis.call('HINCRBY', KEYS[2], 'episodes', 1)
    redis.call('HINCRBY', KEYS[2], 'successes', ARGV[b + 2])
    redis.call('HINCRBY', KEYS[2], 'length_sum', ARGV[b + 3])
    redis.call('HINCRBYFLOAT', KEYS[2], 'return_sum', ARGV[b + 4])
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return written
"""


def record(
    r: redis.Redis,
    keys: Keys,
    job_id: str,
    worker: str,
    now: float,
    episodes: Sequence[EpisodeResult],
    counters: Mapping[str, int],
    sums: Mapping[str, float],
) -> tuple[int, bool]:
    """Store finished episodes (write-once), add counters/sums, and complete the job if that
    was its last episode, in one round trip.

    Returns (episodes newly written, whether this call completed the job).
    ``counters`` go through HINCRBY, ``sums`` through HINCRBYFLOAT; zeros are skipped.
    """
    pipe = r.pipeline(transaction=False)
    if episodes:
        args: list[Any] = [worker, repr(now), len(episodes)]
        for ep in episodes:
            ret = ep.return_
            args += [
                int(ep.index),
                ep.encode(),
                1 if ep.success else 0,
                int(ep.length),
                repr(float(ret)) if ret is not None else "0",
            ]
        keys_ = [keys.job_results(job_id), keys.job_stats(job_id), keys.job_workers(job_id)]
        queue_script(pipe, _RECORD, keys_, args)
        queue_completion(pipe, keys, job_id, now)
    else:
        pipe.hset(keys.job_workers(job_id), worker, repr(now))
    stats = keys.job_stats(job_id)
    for name, n in counters.items():
        if n:
            pipe.hincrby(stats, name, int(n))
    for name, x in sums.items():
        if x and math.isfinite(x):
            pipe.hincrbyfloat(stats, name, float(x))
    replies = pipe.execute()
    if episodes and is_cluster(r) and (replicas := wait_replicas()):
        # before the unit that produced them is acknowledged (see broker/reconcile.py)
        wait_for_replicas(r, keys.job_results(job_id), replicas, WAIT_TIMEOUT_MS)
    if not episodes:
        return 0, False
    written, completed = replies[0], replies[1]
    return int(written), int(completed) == 1


def existing(r: redis.Redis, keys: Keys, job_id: str, indices: Iterable[int]) -> set[int]:
    """Which of ``indices`` already have a result (so a retried unit skips them)."""
    idx = list(indices)
    if not idx:
        return set()
    pipe = r.pipeline(transaction=False)
    for i in idx:
        pipe.hexists(keys.job_results(job_id), str(i))
    return {i for i, present in zip(idx, pipe.execute(), strict=True) if present}


def read_results(
    r: redis.Redis, keys: Keys, job_id: str, warnings: list[str] | None = None
) -> list[EpisodeResult]:
    """Every stored episode result, sorted by index.

    A field that is not a result (``EpisodeResult.decode`` says why: not JSON, not an
    object, a missing or mistyped column) is skipped with a warning in ``warnings``.
    """
    warnings = [] if warnings is None else warnings
    key = keys.job_results(job_id)
    out = []
    for field, raw in r.hscan_iter(key, count=1000):
        try:
            out.append(EpisodeResult.decode(raw))
        except BadEpisode as exc:
            warn_field(warnings, key, field, raw, f"{exc}; skipped")
    out.sort(key=lambda e: e.index)
    return out


def read_stats(r: redis.Redis, keys: Keys, job_id: str) -> dict[str, str]:
    """The stats hash as stored (strings); ``checked_stats`` parses it for reports."""
    return {as_text(k): as_text(v) for k, v in r.hgetall(keys.job_stats(job_id)).items()}


#: Stats fields that only ever count up from zero (histogram buckets are counters too).
COUNTER_FIELDS = frozenset({"episodes", "successes", "length_sum", "steps", "requests", "rows"})


def checked_stats(stats: Mapping[str, str], key: str, warnings: list[str]) -> dict[str, float]:
    """Numeric stats fields; a field that is not a number (a counter: not a non-negative
    integer, a histogram bucket: not ``h:<integer>``) is left out with a warning."""
    out: dict[str, float] = {}
    for name, raw in stats.items():
        bucket = name.startswith(HIST_PREFIX)
        if bucket and not _is_int_text(name[len(HIST_PREFIX) :]):
            warn_field(warnings, key, name, raw, "not a histogram bucket h:<integer>; ignored")
            continue
        value = number(warnings, key, name, raw, counter=bucket or name in COUNTER_FIELDS)
        if value is not None:
            out[name] = value
    return out


def _is_int_text(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def read_workers(
    r: redis.Redis, keys: Keys, job_id: str, warnings: list[str] | None = None
) -> dict[str, float]:
    """Worker id -> last time it recorded progress on the job (bad times: warned, left out)."""
    warnings = [] if warnings is None else warnings
    key = keys.job_workers(job_id)
    out = {}
    for worker, raw in r.hgetall(key).items():
        seen = number(warnings, key, worker, raw)
        if seen is not None:
            out[as_text(worker)] = seen
    return out


def metric_columns(episodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """``m.<metric>`` columns for the task metrics present in any episode (each in the
    ``EpisodeResult.to_dict`` form, as ``results --json`` prints it), sorted."""
    return [f"m.{k}" for k in sorted({k for e in episodes for k in (e.get("metrics") or {})})]


def episode_rows(episodes: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows for tabular output: RESULT_COLUMNS, then the metric columns, from
    episodes in the ``EpisodeResult.to_dict`` form (a results report's ``episodes``).

    ``finished_at`` becomes ISO 8601 in UTC (``2026-12-01T10:17:01Z``): a spreadsheet or
    pandas reads that as a time, where an epoch float is just a large number.
    """
    mcols = metric_columns(episodes)
    header = [*RESULT_COLUMNS, *mcols]
    rows = []
    for e in episodes:
        metrics = e.get("metrics") or {}
        row = [e.get(c) for c in RESULT_COLUMNS] + [metrics.get(c[2:]) for c in mcols]
        row[RESULT_COLUMNS.index("finished_at")] = iso_utc(e.get("finished_at"))
        rows.append(row)
    return header, rows


def iso_utc(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC to the second, e.g. ``2026-12-01T10:17:01Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

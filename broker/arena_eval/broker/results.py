"""Per-episode results, written once, and a job's stats counters.

Why write-once: a unit can run twice (its worker died, or stalled past its
lease, after finishing some episodes). Each result is stored with HSETNX
under the episode index, and the counters that status reads (``episodes``,
``successes``, ``length_sum``, ``return_sum``) move in the same Lua script
only when the HSETNX wrote, so no episode is ever counted twice, and the job
completes (idempotently) in that script the moment ``HLEN == total``.

One episode result (JSON, the value under its index in ``keys.job_results``)::

    {"index": 7, "seed": 107, "success": true, "return": 412.5, "length": 93,
     "metrics": {"near_object": 1.0, "max_near_object": 1.0, ...},
     "worker": "host-123-ab12cd", "wall_s": 0.41, "finished_at": 1732123456.7}

``metrics`` holds, per task metric the env reports each step, the *final*
value under its own name and the episode's *maximum* under ``max_<name>``
(e.g. Meta-World's ``grasp_success``: grasping at the end vs. ever grasped);
NaN and never-reported values are ``null``.

The stats hash (``keys.job_stats``) is flushed by sim workers once per
finished episode, pipelined with the result, never per step:

    episodes, successes, length_sum, return_sum   write-once counters (above)
    steps                 env steps taken by active slots (incl. re-runs)
    requests, rows        policy requests and the rows they carried
    sum:<t>               sums of reply timings t in metrics.TIMING_FIELDS
    h:<bucket>            round-trip latency histogram (metrics.LatencyHistogram)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import redis

from arena_eval.broker.fields import as_text, number, warn_field
from arena_eval.broker.jobs import TERMINAL_LUA
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import HIST_PREFIX

#: Fixed leading columns of ``results --format csv`` (then ``m.<metric>``, sorted).
RESULT_COLUMNS = (
    "index", "seed", "success", "return", "length", "wall_s", "worker", "finished_at",
)  # fmt: skip
_ARGS_PER_EPISODE = 5

# KEYS: job, results, stats, workers. ARGV: worker, now, n, then n x (index, json, success 0/1,
# length, return). Returns {episodes newly written, 1 if this call completed the job}.
_RECORD = f"""
local terminal = {TERMINAL_LUA}
local written = 0
for i = 0, tonumber(ARGV[3]) - 1 do
  local b = 4 + i * {_ARGS_PER_EPISODE}
  if redis.call('HSETNX', KEYS[2], ARGV[b], ARGV[b + 1]) == 1 then
    written = written + 1
    redis.call('HINCRBY', KEYS[3], 'episodes', 1)
    redis.call('HINCRBY', KEYS[3], 'successes', ARGV[b + 2])
    redis.call('HINCRBY', KEYS[3], 'length_sum', ARGV[b + 3])
    redis.call('HINCRBYFLOAT', KEYS[3], 'return_sum', ARGV[b + 4])
  end
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state')
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if state and not terminal[state] and total > 0 and redis.call('HLEN', KEYS[2]) >= total then
  redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
  redis.call('HSET', KEYS[1], 'state', 'completed', 'reason', '', 'finished', ARGV[2])
  return {{written, 1}}
end
return {{written, 0}}
"""


def finite(value: float) -> float | None:
    """``value`` as a float, or None if NaN/inf (JSON has no NaN)."""
    v = float(value)
    return v if math.isfinite(v) else None


def record(
    r: redis.Redis,
    keys: Keys,
    job_id: str,
    worker: str,
    now: float,
    episodes: Sequence[Mapping[str, Any]],
    counters: Mapping[str, int],
    sums: Mapping[str, float],
) -> tuple[int, bool]:
    """Store finished episodes (write-once) and add counters/sums, in one round trip.

    Returns (episodes newly written, whether this call completed the job).
    ``counters`` go through HINCRBY, ``sums`` through HINCRBYFLOAT; zeros are skipped.
    """
    pipe = r.pipeline(transaction=False)
    if episodes:
        args: list[Any] = [worker, repr(now), len(episodes)]
        for ep in episodes:
            ret = ep.get("return")
            args += [
                int(ep["index"]),
                json.dumps(ep, sort_keys=True, allow_nan=False),
                1 if ep.get("success") else 0,
                int(ep["length"]),
                repr(float(ret)) if ret is not None else "0",
            ]
        keys_ = [keys.job(job_id), keys.job_results(job_id), keys.job_stats(job_id),
                 keys.job_workers(job_id)]  # fmt: skip
        r.register_script(_RECORD)(keys=keys_, args=args, client=pipe)
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
    if not episodes:
        return 0, False
    written, completed = replies[0]
    return int(written), bool(completed)


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
) -> list[dict[str, Any]]:
    """Every stored episode result, sorted by index.

    A field that is not a result this module wrote (not JSON, not an object, a
    missing or mistyped column) is skipped with a warning in ``warnings``.
    """
    warnings = [] if warnings is None else warnings
    key = keys.job_results(job_id)
    out = []
    for field, raw in r.hscan_iter(key, count=1000):
        try:
            episode = json.loads(raw)
        except ValueError:
            warn_field(warnings, key, field, raw, "not valid JSON; skipped")
            continue
        problem = episode_problem(episode)
        if problem:
            warn_field(warnings, key, field, raw, f"{problem}; skipped")
            continue
        out.append(episode)
    out.sort(key=lambda e: int(e["index"]))
    return out


def episode_problem(episode: Any) -> str:
    """Why ``episode`` is not a result dict as documented above ('' if it is one)."""
    if not isinstance(episode, dict):
        return "not a JSON object"
    if not _is_int(episode.get("index")) or episode["index"] < 0:
        return "'index' is not a non-negative integer"
    if not _is_number(episode.get("length")):
        return "'length' is not a number"
    for name in ("return", "seed", "wall_s", "finished_at"):
        if episode.get(name) is not None and not _is_number(episode[name]):
            return f"{name!r} is not a number"
    if not isinstance(episode.get("success", False), bool):
        return "'success' is not true or false"
    if episode.get("worker") is not None and not isinstance(episode["worker"], str):
        return "'worker' is not a string"
    metrics = episode.get("metrics")
    if metrics is not None and not (
        isinstance(metrics, dict) and all(v is None or _is_number(v) for v in metrics.values())
    ):
        return "'metrics' is not an object of numbers"
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    """``m.<metric>`` columns for the task metrics present in any episode, sorted."""
    return [f"m.{k}" for k in sorted({k for e in episodes for k in (e.get("metrics") or {})})]


def episode_rows(episodes: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows for tabular output: RESULT_COLUMNS, then the metric columns.

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

"""Numbers a job reports: success rate with its Wilson interval, latency quantiles, means.

Why these choices:

* **Wilson score interval** (95 %), not the normal approximation: evaluation
  jobs are often small (30 episodes) and success rates sit near 0 or 1, where
  ``p +- 1.96 sqrt(p(1-p)/n)`` collapses to a zero-width or out-of-range
  interval. Wilson stays inside [0, 1] and is honest at n = 30.
* **Log-bucketed latency histogram**: the per-request round trip is recorded
  into buckets a quarter octave wide (``2**(k/4)`` ms), so a job's p50/p99 come
  from a few dozen integer counters that many sim workers can ``HINCRBY`` into
  the same Redis hash with no coordination. The estimate is the bucket's
  geometric midpoint, within about 9 % of the true quantile; good enough to
  tell 0.5 ms from 5 ms, which is what an operator asks.

Everything here is pure arithmetic on plain data (no Redis, no numpy): counters,
and episodes as :class:`~arena_eval.broker.episode.EpisodeResult`, so the CLI,
the sim worker and the tests share one definition of every figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from arena_eval.broker.episode import EpisodeResult

#: z for a two-sided 95 % interval.
Z_95 = 1.959963984540054
#: Histogram resolution: buckets per doubling of latency.
BUCKETS_PER_OCTAVE = 4
#: Latencies below this (ms) share the lowest bucket.
MIN_LATENCY_MS = 1e-3
#: Field-name prefix of histogram buckets in a job's stats hash.
HIST_PREFIX = "h:"
#: Field-name prefix of per-request timing sums in a job's stats hash.
SUM_PREFIX = "sum:"
#: Milliseconds spent in the simulator (env steps and resets), summed per job by the
#: rollout: with ``sum:round_trip_ms`` it splits a job's time between sim and policy.
SIM_MS_FIELD = f"{SUM_PREFIX}sim_ms"
#: Reply timings (``PolicyClient.last_timing``) summed per job; means are sum / requests.
TIMING_FIELDS = ("queue_ms", "decode_ms", "infer_ms", "encode_ms", "round_trip_ms", "batch_rows")


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n``; ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bucket_of(ms: float) -> int:
    """Histogram bucket of a latency in milliseconds."""
    return math.floor(math.log2(max(ms, MIN_LATENCY_MS)) * BUCKETS_PER_OCTAVE)


def bucket_value(bucket: int) -> float:
    """Representative latency (ms) of a bucket: its geometric midpoint."""
    return float(2.0 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE))


@dataclass
class LatencyHistogram:
    """Counts per log bucket; add, merge, serialise to hash fields, and read quantiles."""

    counts: dict[int, int] = field(default_factory=dict)

    def add(self, ms: float) -> None:
        b = bucket_of(ms)
        self.counts[b] = self.counts.get(b, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def fields(self) -> dict[str, int]:
        """Hash fields (``h:<bucket>``) -> count, for ``HINCRBY`` into a stats hash."""
        return {f"{HIST_PREFIX}{b}": c for b, c in self.counts.items() if c}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """Rebuild from a stats hash; fields that are not histogram buckets are ignored."""
        out = cls()
        for name, value in data.items():
            if name.startswith(HIST_PREFIX):
                try:
                    out.counts[int(name[len(HIST_PREFIX) :])] = int(float(value))
                except (ValueError, OverflowError):
                    continue
        return out

    def quantile(self, q: float) -> float | None:
        """Estimated ``q``-quantile in ms (None when empty): the bucket holding rank ``q*n``."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        n = self.total
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return bucket_value(b)
        return bucket_value(max(self.counts))


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the non-None, finite values; None if there are none."""
    total = 0.0
    n = 0
    for v in values:
        if v is not None and math.isfinite(v):
            total += v
            n += 1
    return total / n if n else None


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summarize_episodes(episodes: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Job metrics from finished-episode results.

    ``success_rate`` is the mean over finished episodes of the success flag at
    termination; ``num_episodes`` counts finished episodes; ``metric_means``
    holds, per task metric key, the mean over episodes that reported it.
    """
    n = len(episodes)
    successes = sum(1 for e in episodes if e.success)
    low, high = wilson_interval(successes, n)
    keys = sorted({k for e in episodes for k in e.metrics})
    return {
        "num_episodes": n,
        "successes": successes,
        "success_rate": ratio(successes, n),
        "wilson_low": low,
        "wilson_high": high,
        "mean_length": mean(float(e.length) for e in episodes),
        "mean_return": mean(e.return_ for e in episodes),
        "metric_means": {k: mean(e.metrics.get(k) for e in episodes) for k in keys},
    }


def summarize_stats(stats: Mapping[str, Any], elapsed_s: float | None) -> dict[str, Any]:
    """Status figures from a job's stats hash (counters, timing sums, histogram).

    The hash layout is documented in ``broker/results.py``; ``elapsed_s`` is the
    job's running time so far (for steps/s). Give it ``results.checked_stats``:
    a value that is not a finite number counts as missing here, silently.
    """

    def num(name: str) -> float:
        try:
            value = float(stats.get(name, 0) or 0)
        except ValueError:
            return 0.0
        return value if math.isfinite(value) else 0.0

    episodes = int(num("episodes"))
    successes = int(num("successes"))
    requests = num("requests")
    low, high = wilson_interval(min(successes, episodes), episodes)
    hist = LatencyHistogram.from_fields(stats)
    steps = int(num("steps"))
    out: dict[str, Any] = {
        "episodes_done": episodes,
        "successes": successes,
        "success_rate": ratio(successes, episodes),
        "wilson_low": low,
        "wilson_high": high,
        "mean_length": ratio(num("length_sum"), episodes),
        "mean_return": ratio(num("return_sum"), episodes),
        "steps": steps,
        "steps_per_s": ratio(steps, elapsed_s) if elapsed_s and elapsed_s > 0 else None,
        "requests": int(requests),
        "round_trip_p50_ms": hist.quantile(0.5),
        "round_trip_p99_ms": hist.quantile(0.99),
    }
    for name in TIMING_FIELDS:
        out[f"mean_{name}"] = ratio(num(SUM_PREFIX + name), requests)
    return out

"""What a worker process records for ``/metrics``: one process-wide recorder, off by default.

Why a module of plain functions over one global: the workers call these from
their hot paths (the policy worker once per batch, a sim worker once per
request and per finished step batch), and most processes never serve metrics.
Until ``enable`` runs (``--metrics-port``), every hook is a global read and a
``None`` test, and nothing is allocated; the workers' modules hold one-line
calls and know nothing of Prometheus.

Once enabled, the cost is bounded per batch or per request, never per row:

* the policy worker's answers are counted by outcome in plain integers, written
  only by the serve loop and read by the scrape thread (no lock on the hot
  path); its expired/stale counts and its busy fraction (time inside ``infer``
  over wall time) are read from its ``WorkerStats`` at scrape time;
* histograms (queue, infer, batch rows, round trip) observe once per request
  or per batch into plain per-pool counts (``PoolHistogram``), rendered as
  Prometheus histograms only when scraped.

A policy worker process serves one pool (``enable(pool=...)``); clients (sim
workers, gateways) pass the pool per call. The metric list is in docs/metrics.md.

Readiness lives here too: ``enable`` names what the process must have before it
is ready (``model``, ``env`` or ``pool spec``), the worker marks each one
``ready`` once it has it, and ``metrics_http`` adds the Redis check.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "client_outcome",
    "enable",
    "enabled",
    "episodes",
    "over_delivered",
    "policy_answered",
    "policy_batch",
    "policy_serving",
    "readiness",
    "ready",
    "round_trip",
]

#: Seconds: from 0.5 ms (an idle pool on loopback) to 30 s (a cold model, a saturated pool).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Rows per ``infer`` call: powers of two up to a large GPU batch.
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

#: Outcomes of a request a policy worker took: answered, dead-lettered for bad input or a
#: raising policy, dead-lettered after too many deliveries, past its deadline, slot rewritten.
WORKER_OUTCOMES = ("ok", "error", "dead", "expired", "stale")
#: Outcomes of a request as a client (sim worker, gateway) saw it.
CLIENT_OUTCOMES = ("ok", "error", "expired")


class WorkerCounters(Protocol):
    """What the recorder reads of a policy worker's ``WorkerStats`` at scrape time."""

    expired: int
    stale: int
    infer_s: float
    started: float


class _Replied(Protocol):
    """A request entry as ``policy_answered`` sees it (``entries.Pending``)."""

    entry_id: bytes
    error: str | None


class PoolHistogram:
    """A histogram per pool kept as plain numbers, rendered at scrape time.

    Why not ``prometheus_client.Histogram``: its ``observe`` costs about 3.5 us; a
    bisect and two adds under an uncontended lock cost a tenth of that, on a path
    that runs once per request. The lock is there for the overlapped rollout, whose
    two lanes' clients record from two threads.
    """

    def __init__(self, name: str, doc: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = tuple(float(b) for b in bounds)
        #: per pool: a count per bucket (the last one +Inf), then the sum
        self._rows: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _row(self, pool: str) -> list[float]:
        row = self._rows.get(pool)
        if row is None:
            with self._lock:
                row = self._rows.setdefault(pool, [0.0] * (len(self.bounds) + 2))
        return row

    def observe(self, pool: str, value: float) -> None:
        row = self._row(pool)
        i = bisect_left(self.bounds, value)
        with self._lock:
            row[i] += 1
            row[-1] += value

    def observe_all(self, pool: str, values: Iterable[float]) -> None:
        row = self._row(pool)
        bounds = self.bounds
        with self._lock:
            for value in values:
                row[bisect_left(bounds, value)] += 1
                row[-1] += value

    def family(self) -> HistogramMetricFamily:
        with self._lock:
            rows = {pool: list(row) for pool, row in self._rows.items()}
        out = HistogramMetricFamily(self.name, self.doc, labels=["pool"])
        edges = [*(repr(b) for b in self.bounds), "+Inf"]
        for pool, row in sorted(rows.items()):
            running = 0.0
            buckets = []
            for edge, n in zip(edges, row[:-1], strict=True):
                running += n
                buckets.append((edge, running))
            out.add_metric([pool], buckets, row[-1])
        return out


class Recorder:
    """The metrics of one process: created by ``enable``, fed by the hooks below."""

    def __init__(self, role: str, pool: str = "") -> None:
        self.role = role
        self.pool = pool
        self.registry = CollectorRegistry()
        self.round_trip = PoolHistogram(
            "arena_round_trip_seconds", "Client-side round trip of one request.", LATENCY_BUCKETS
        )
        self.queue = PoolHistogram(
            "arena_queue_seconds", "Age of a request when a policy worker picked it up.",
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.infer = PoolHistogram(
            "arena_infer_seconds", "Seconds of one batched policy.infer (all capped calls).",
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_rows = PoolHistogram(
            "arena_batch_rows", "Observation rows per batch a policy worker ran.", ROW_BUCKETS
        )
        sim = self.registry if role == "sim" else None  # only a sim worker steps envs
        self.steps = Counter("arena_sim_steps", "Env steps of flushed episodes.", registry=sim)
        self.episodes = Counter(
            "arena_episodes", "Episodes this sim worker finished, by job and outcome.",
            ["job", "outcome"], registry=sim,
        )  # fmt: skip
        #: a client's requests by (pool, outcome); two lanes may count at once
        self.sent: dict[tuple[str, str], int] = {}
        self.sent_lock = threading.Lock()
        #: the policy worker's answers by outcome: written by the serve loop only
        self.answered = dict.fromkeys(("ok", "error", "dead"), 0)
        self.dead_letters = 0
        self.over_delivered: set[bytes] = set()
        self.stats: WorkerCounters | None = None
        self.registry.register(_Collector(self))

    def count_sent(self, pool: str, outcome: str) -> None:
        with self.sent_lock:
            self.sent[pool, outcome] = self.sent.get((pool, outcome), 0) + 1


class _Collector(Collector):
    """The recorder's numbers as metric families, for the parts of its role."""

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def collect(self) -> Iterator[Metric]:
        rec = self._rec
        if rec.role == "policy":
            yield from self._policy(rec)
            return
        yield rec.round_trip.family()
        sent = CounterMetricFamily(
            "arena_client_requests", "Requests this process sent to a pool, by outcome.",
            labels=["pool", "outcome"],
        )  # fmt: skip
        with rec.sent_lock:
            counts = dict(rec.sent)
        for (pool, outcome), n in sorted(counts.items()):
            sent.add_metric([pool, outcome], n)
        yield sent

    def _policy(self, rec: Recorder) -> Iterator[Metric]:
        stats = rec.stats
        counts = dict(rec.answered)
        counts["expired"] = stats.expired if stats else 0
        counts["stale"] = stats.stale if stats else 0
        requests = CounterMetricFamily(
            "arena_requests", "Requests this policy worker took, by outcome.",
            labels=["pool", "outcome"],
        )  # fmt: skip
        for outcome in WORKER_OUTCOMES:
            requests.add_metric([rec.pool, outcome], counts[outcome])
        yield requests
        dead = CounterMetricFamily(
            "arena_dead_letters", "Requests this worker dead-lettered.", labels=["pool"]
        )
        dead.add_metric([rec.pool], rec.dead_letters)
        yield dead
        busy = GaugeMetricFamily(
            "arena_busy_fraction",
            "Time inside policy.infer over wall time since the worker started.",
            labels=["pool"],
        )
        busy.add_metric([rec.pool], busy_fraction(stats) if stats else 0.0)
        yield busy
        for hist in (rec.queue, rec.infer, rec.batch_rows):
            yield hist.family()


def busy_fraction(stats: WorkerCounters, now: float | None = None) -> float:
    """``infer_s`` over the seconds since ``started`` (0 for a worker that just started)."""
    wall = (time.time() if now is None else now) - stats.started
    return min(1.0, stats.infer_s / wall) if wall > 0 else 0.0


class _Readiness:
    """What the process still waits for before ``/readyz`` may say 200 (Redis aside)."""

    def __init__(self) -> None:
        self.waiting: set[str] = set()
        self._lock = threading.Lock()

    def need(self, names: Iterable[str]) -> None:
        with self._lock:
            self.waiting = set(names)

    def done(self, name: str) -> None:
        if name in self.waiting:
            with self._lock:
                self.waiting.discard(name)


_REC: Recorder | None = None
_READY = _Readiness()


def enable(role: str, *, pool: str = "", needs: Sequence[str] = ()) -> Recorder:
    """Start recording for this process (``role``: policy, sim, gateway); idempotent per role.

    ``needs`` are what ``/readyz`` waits for (``ready(name)`` marks each one).
    """
    global _REC
    if _REC is None or _REC.role != role or _REC.pool != pool:
        _REC = Recorder(role, pool)
        _READY.need(needs)
    return _REC


def disable() -> None:
    """Stop recording (tests that enable it in-process)."""
    global _REC
    _REC = None
    _READY.need(())


def enabled() -> Recorder | None:
    return _REC


def ready(name: str) -> None:
    """The process now has ``name`` (its model, its env, its pool's spec)."""
    _READY.done(name)


def readiness() -> tuple[bool, str]:
    """(ready, what it still waits for) -- Redis is checked by the HTTP endpoint."""
    waiting = sorted(_READY.waiting)
    if waiting:
        return False, "not loaded yet: " + ", ".join(waiting)
    return True, "ok"


# -- hooks: one call each in the workers ---------------------------------------------------
def policy_serving(pool: str, stats: WorkerCounters) -> None:
    """A policy worker joined ``pool`` with its model loaded: ready; read ``stats`` at scrape."""
    rec = _REC
    if rec is None:
        return
    rec.pool = pool
    rec.stats = stats
    ready("model")


def policy_batch(replies: Sequence[tuple[Any, dict[str, Any]]], infer_s: float, rows: int) -> None:
    """One batch through ``infer``: its seconds and rows, and each reply's queue time."""
    rec = _REC
    if rec is None:
        return
    pool = rec.pool
    rec.infer.observe(pool, infer_s)
    rec.batch_rows.observe(pool, rows)
    rec.queue.observe_all(pool, [float(msg["timing"]["queue_ms"]) / 1e3 for _p, msg in replies])


def over_delivered(entry_id: bytes) -> None:
    """This entry will be dead-lettered for too many deliveries (``dead``, not ``error``)."""
    rec = _REC
    if rec is not None:
        rec.over_delivered.add(entry_id)


def policy_answered(replies: Sequence[tuple[_Replied, Any]], items: Sequence[_Replied]) -> None:
    """Count a batch's answers: replies sent (``ok``), dead letters (``error``/``dead``)."""
    rec = _REC
    if rec is None:
        return
    counts = rec.answered
    counts["ok"] += sum(1 for p, _msg in replies if p.error is None)
    for p in items:
        if p.error is None:
            continue
        rec.dead_letters += 1
        if p.entry_id in rec.over_delivered:
            rec.over_delivered.discard(p.entry_id)
            counts["dead"] += 1
        else:
            counts["error"] += 1


def round_trip(pool: str, seconds: float) -> None:
    """A client got its answer from ``pool`` after ``seconds``."""
    rec = _REC
    if rec is None:
        return
    rec.round_trip.observe(pool, seconds)
    rec.count_sent(pool, "ok")


def client_outcome(pool: str, outcome: str) -> None:
    """A client's request to ``pool`` ended without actions: ``error`` or ``expired``."""
    rec = _REC
    if rec is not None:
        rec.count_sent(pool, outcome)


def episodes(job_id: str, finished: Iterable[Any], steps: int) -> None:
    """Episodes a sim worker flushed (each with ``.success``), and the steps that made them."""
    rec = _REC
    if rec is None:
        return
    ok = failed = 0
    for e in finished:
        if e.success:
            ok += 1
        else:
            failed += 1
    if ok:
        rec.episodes.labels(job_id, "success").inc(ok)
    if failed:
        rec.episodes.labels(job_id, "failure").inc(failed)
    if steps:
        rec.steps.inc(steps)

"""``arena-eval metrics serve``: the whole fleet as one Prometheus target, read from Redis.

Why read at scrape time from Redis: everything a fleet view needs is already
there -- every policy worker's counters in its heartbeat (``pool.py``), every
sim worker's and gateway's record (``fleet.py``), each pool's streams, each
job's stats hash (``job_view.py``, ``results.py``). One exporter next to Redis
covers every node with no per-node scrape config, and it shows the same figures
as ``arena-eval pools``, ``workers`` and ``jobs``, from the same readers.
Workers may still serve their own ``--metrics-port`` for per-process
histograms (queue, infer, batch rows); the two sets of names do not overlap.

Counters are per worker (``worker`` label), never summed here: a worker that
dies takes its series with it, and ``sum(rate(...))`` in PromQL stays right,
where a sum exported here would drop and read as a counter reset.

Jobs: the newest ``jobs`` (50 by default) jobs of the ``jobs`` index, so a long
history does not grow the scrape without bound. A job's round-trip histogram
comes from the log buckets sim workers add into its stats hash
(``metrics.LatencyHistogram``), each counted under the first fixed bucket
(``telemetry.LATENCY_BUCKETS``) at or above its upper edge.

A scrape while Redis is away still answers: ``arena_redis_up 0`` and nothing else
from Redis, so an alert can say what is wrong.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from arena_eval.broker import fleet, pool
from arena_eval.broker.connection import connect
from arena_eval.broker.job_view import JobView, list_job_views
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import BUCKETS_PER_OCTAVE, SUM_PREFIX, LatencyHistogram
from arena_eval.broker.metrics_http import BuildInfo, MetricsEndpoint
from arena_eval.broker.redis_probe import RedisProbe
from arena_eval.broker.results import checked_stats, read_stats
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import stop_on_signals
from arena_eval.broker.telemetry import LATENCY_BUCKETS

__all__ = ["DEFAULT_JOBS", "FleetCollector", "fleet_endpoint", "round_trip_buckets", "serve"]

log = logging.getLogger("arena_eval.metrics")

#: Jobs exported per scrape, newest first.
DEFAULT_JOBS = 50
#: A scrape gives up on Redis after about this long (then ``arena_redis_up 0``), well inside
#: Prometheus's default 10 s scrape timeout; the workers' long reconnect budget is not for it.
SCRAPE_RETRY_BUDGET_S = 2.0
SCRAPE_SOCKET_TIMEOUT_S = 5.0

_POOL = ["pool"]
_WORKER = ["pool", "worker"]
#: Heartbeat counters of a policy worker: field -> (``arena_worker_<name>_total``, help).
_WORKER_COUNTERS = {
    "batches": ("batches", "Batches this policy worker ran."),
    "rows": ("rows", "Observation rows this policy worker ran."),
    "infer_calls": ("infer_calls", "policy.infer calls (over --max-batch rows: several)."),
    "infer_s": ("infer_seconds", "Seconds inside policy.infer."),
    "reclaimed": ("reclaimed", "Requests taken over from dead workers."),
}


class FleetCollector(Collector):
    """Reads pools, workers, gateways and jobs from Redis on every ``collect``."""

    def __init__(self, r: redis.Redis, keys: Keys, *, jobs: int = DEFAULT_JOBS) -> None:
        self._r = r
        self._keys = keys
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("arena_redis_up", "1 when the exporter could read Redis.")
        try:
            found = [*self._pools(), *self._sim_side(), *self._job_metrics()]
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics scrape: cannot read Redis: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from found

    # -- pools and policy workers -------------------------------------------------------
    def _pools(self) -> list[Metric]:
        live = _gauge("arena_pool_live_workers", "Policy workers with a live heartbeat.", _POOL)
        pending = _gauge("arena_pool_pending_requests", "Requests read, not yet acked.", _POOL)
        queued = _gauge("arena_pool_queued_entries", "Entries in the request streams.", _POOL)
        dead = _gauge("arena_pool_dead_letters", "Entries in the dead-letter stream.", _POOL)
        requests = _counter(
            "arena_worker_requests", "Requests a policy worker took, by outcome.",
            [*_WORKER, "outcome"],
        )  # fmt: skip
        counters = {
            field: _counter(f"arena_worker_{name}", doc, _WORKER)
            for field, (name, doc) in _WORKER_COUNTERS.items()
        }
        busy = _gauge("arena_worker_busy_fraction", "Share of wall time in infer.", _WORKER)
        busy_s = _gauge("arena_worker_busy_seconds", "Seconds in the current infer.", _WORKER)
        age = _gauge("arena_worker_heartbeat_age_seconds", "Heartbeat age.", _WORKER)
        for name in pool.pool_names(self._r, self._keys):
            d = pool.describe_pool(self._r, self._keys, name)
            live.add_metric([name], len(d["workers"]))
            pending.add_metric([name], d["pending_requests"])
            queued.add_metric([name], d["queued_entries"])
            dead.add_metric([name], d["dead_letters"])
            for w in pool.live_workers(self._r, self._keys, name):
                labels = [name, w.worker_id]
                for outcome, value in worker_outcomes(w.data).items():
                    requests.add_metric([*labels, outcome], value)
                for counter, family in counters.items():
                    family.add_metric(labels, _num(w.data, counter))
                busy.add_metric(labels, heartbeat_busy_fraction(w.data))
                busy_s.add_metric(labels, _num(w.data, "busy_s"))
                age.add_metric(labels, w.age_s)
        return [live, pending, queued, dead, requests, *counters.values(), busy, busy_s, age]

    # -- sim workers and gateways -----------------------------------------------------------
    def _sim_side(self) -> list[Metric]:
        sims = _gauge("arena_sim_workers", "Live sim workers, by state.", ["state"])
        units = _counter("arena_sim_worker_units", "Units a sim worker finished.", ["worker"])
        slots = _gauge("arena_sim_worker_env_slots", "Env slots of a sim worker.", ["worker"])
        states: Tally[str] = Tally()
        for s in fleet.live_sim_workers(self._r, self._keys):
            states[str(s.data.get("state", "unknown"))] += 1
            units.add_metric([s.worker_id], _num(s.data, "units_done"))
            slots.add_metric([s.worker_id], _num(s.data, "num_envs"))
        for state, n in sorted(states.items()):
            sims.add_metric([state], n)
        gw = ["pool", "gateway"]
        gw_requests = _counter("arena_gateway_requests", "Requests a gateway answered.", gw)
        gw_errors = _counter("arena_gateway_errors", "Requests answered with an error.", gw)
        sessions = _gauge("arena_gateway_sessions", "Clients with a session.", gw)
        for g in fleet.live_gateways(self._r, self._keys):
            labels = [str(g.data.get("pool", "")), g.worker_id]
            gw_requests.add_metric(labels, _num(g.data, "requests"))
            gw_errors.add_metric(labels, _num(g.data, "errors"))
            sessions.add_metric(labels, _num(g.data, "sessions"))
        return [sims, units, slots, gw_requests, gw_errors, sessions]

    # -- jobs -------------------------------------------------------------------------------
    def _job_metrics(self) -> list[Metric]:
        job = ["job", "pool"]
        episodes = _counter("arena_job_episodes", "Finished episodes, by outcome.",
                            [*job, "outcome"])  # fmt: skip
        expected = _gauge("arena_job_episodes_expected", "Episodes the job asks for.", job)
        state = _gauge("arena_job_state", "1 for the state the job is in.", [*job, "state"])
        steps = _counter("arena_job_steps", "Env steps of the job's stored episodes.", job)
        requests = _counter("arena_job_requests", "Policy requests the job sent.", job)
        rt = HistogramMetricFamily(
            "arena_job_round_trip_seconds", "Client-side round trip of the job's requests.",
            labels=job,
        )  # fmt: skip
        warnings: list[str] = []
        views = list_job_views(self._r, self._keys, self._jobs, warnings) if self._jobs > 0 else []
        for view, done, successes in views:
            labels = [view.job_id, str(view.spec.get("pool", ""))]
            episodes.add_metric([*labels, "success"], successes)
            episodes.add_metric([*labels, "failure"], max(0, done - successes))
            expected.add_metric(labels, view.total)
            state.add_metric([*labels, view.state], 1.0)
            stats = self._stats(view)
            steps.add_metric(labels, stats.get("steps", 0.0))
            requests.add_metric(labels, stats.get("requests", 0.0))
            buckets, total_ms = round_trip_buckets(stats)
            rt.add_metric(labels, buckets, total_ms / 1e3)
        return [episodes, expected, state, steps, requests, rt]

    def _stats(self, view: JobView) -> dict[str, float]:
        raw = read_stats(self._r, self._keys, view.job_id)
        return checked_stats(raw, self._keys.job_stats(view.job_id), [])


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def worker_outcomes(data: Mapping[str, Any]) -> dict[str, float]:
    """A policy worker's request counters by outcome, from its heartbeat.

    ``dead`` is every dead letter here (a heartbeat does not split them by reason; the
    worker's own ``/metrics`` does, as ``error`` and ``dead``).
    """
    stale = _num(data, "stale")
    return {
        "ok": max(0.0, _num(data, "requests") - stale),
        "dead": _num(data, "dead_letters"),
        "expired": _num(data, "expired"),
        "stale": stale,
    }


def heartbeat_busy_fraction(data: Mapping[str, Any]) -> float:
    """``infer_s`` over the seconds from ``started`` to the heartbeat (0 when unknown)."""
    wall = _num(data, "heartbeat") - _num(data, "started")
    return min(1.0, _num(data, "infer_s") / wall) if wall > 0 else 0.0


def round_trip_buckets(stats: Mapping[str, float]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` pairs in seconds from a job's log buckets, and the sum (ms)."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for bucket, n in LatencyHistogram.from_fields(stats).counts.items():
        upper_s = 2.0 ** ((bucket + 1) / BUCKETS_PER_OCTAVE) / 1e3
        slot = next(
            (i for i, le in enumerate(LATENCY_BUCKETS) if upper_s <= le), len(LATENCY_BUCKETS)
        )
        counts[slot] += n
    out: list[tuple[str, float]] = []
    running = 0
    for le, n in zip([*map(_le, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
        running += n
        out.append((le, float(running)))
    return out, float(stats.get(f"{SUM_PREFIX}round_trip_ms", 0.0))


def _le(value: float) -> str:
    return repr(float(value))


def _num(data: Mapping[str, Any], name: str) -> float:
    try:
        value = float(data.get(name, 0) or 0)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def fleet_endpoint(
    settings: RedisSettings, *, host: str, port: int, jobs: int = DEFAULT_JOBS
) -> MetricsEndpoint:
    """The exporter's endpoint, serving on a daemon thread (ConfigError if it cannot bind)."""
    registry = CollectorRegistry()
    r = connect(
        settings, retry_budget_s=SCRAPE_RETRY_BUDGET_S, socket_timeout_s=SCRAPE_SOCKET_TIMEOUT_S
    )
    registry.register(FleetCollector(r, Keys(settings.prefix), jobs=jobs))
    probe = RedisProbe(settings)
    registry.register(BuildInfo("exporter", probe))
    endpoint = MetricsEndpoint(registry, ready=probe.check)
    endpoint.start(host, port)
    return endpoint


def serve(
    settings: RedisSettings,
    *,
    host: str,
    port: int,
    jobs: int = DEFAULT_JOBS,
    on_ready: Callable[[tuple[str, int]], None] | None = None,
) -> None:
    """Serve the fleet's metrics until SIGTERM/SIGINT/SIGHUP."""
    stop = threading.Event()
    with stop_on_signals(stop.set, "closing the metrics endpoint"):
        endpoint = fleet_endpoint(settings, host=host, port=port, jobs=jobs)
        if on_ready is not None:
            on_ready(endpoint.address)
        try:
            stop.wait()
        finally:
            endpoint.close()

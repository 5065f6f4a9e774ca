"""The sim worker process: take a unit, run it, settle it; repeat until stopped.

``SimWorker`` is the serve loop that ties four parts together, each readable
and changeable alone:

* ``unit_queue.UnitQueue``, the unit lease: take a unit whose lease lapsed or a
  new one, settle it on the stream by its outcome, renew it, leave the group;
* ``unit_runner.UnitRunner``, the run of one unit: wait for its pool, check
  specs, roll its episodes out, classify how it ended (``lease.Outcome``);
* ``heartbeat.Heartbeat``, a thread that keeps the worker visible, renews the
  held unit's lease and aborts it on a cancel or a lost lease;
* ``config.SimWorkerConfig``, every knob with its one default.

How the job-level guarantees come out of this loop:

* **Crash recovery.** A unit is read through the consumer group and stays in
  the pending list until acked. The heartbeat renews its lease a few times per
  lease period; a worker killed with -9 stops renewing and, ``lease_ms`` later,
  any worker's claim of stale units takes the unit over. Episodes already
  stored are skipped, and results are write-once.
* **Cancel and fail.** The heartbeat reads the job state and aborts the unit
  when the job is terminal; the rollout polls the abort event once per step, so
  a cancelled job stops within about a second. Units of terminal jobs are acked
  and deleted.
* **No silent hang, no head-of-line blocking.** A unit whose pool no live
  worker serves is *deferred* (``pool_watch.py``): the job says
  ``waiting_for_pool`` with the command that would fix it, and the unit goes
  back to the tail of the queue as a fresh entry (a deferral is not a delivery,
  so it never counts toward ``max_deliveries``). The worker moves on to the
  next unit, so other jobs run, and every deferred unit comes round again, in
  queue order, so none is starved. A worker that finds only deferred units
  waits ``pool_poll_s`` per round instead of spinning.
* **Graceful stop.** ``stop()`` (SIGTERM/SIGINT) aborts the running unit and
  puts it back at the tail of the queue at once instead of waiting for the
  lease to lapse. A stop or a cancel that comes while the worker waits for a
  policy answer (up to ``policy_timeout_s`` on a pool whose worker died) ends
  that wait within a second: the PolicyClient polls ``should_stop`` between
  its blocking reads and raises ``PolicyInterrupted``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import ResponseError

from arena_eval.broker import fleet, jobs, streams, telemetry
from arena_eval.broker.connection import connect
from arena_eval.broker.jobs import JobNotFound
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import stop_on_signals
from arena_eval.broker.units import WorkUnit
from arena_eval.sim_worker.config import SimWorkerConfig
from arena_eval.sim_worker.heartbeat import Heartbeat, worker_status
from arena_eval.sim_worker.kept import PoolClients
from arena_eval.sim_worker.lease import Lease, Outcome
from arena_eval.sim_worker.unit_queue import UnitQueue
from arena_eval.sim_worker.unit_runner import REDIS_DOWN, UnitRunner

__all__ = ["SimWorker", "SimWorkerConfig", "serve"]

log = logging.getLogger("arena_eval.sim_worker")

#: Keyword defaults of ``SimWorker``: the config's, so that no default is written twice.
_DEFAULTS = SimWorkerConfig()


class SimWorker:
    """Run work units from the shared queue until ``stop()`` (or, in burst mode, until idle)."""

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        client: redis.Redis | None = None,
        num_envs: int = _DEFAULTS.num_envs,
        lease_ms: int = _DEFAULTS.lease_ms,
        worker_id: str | None = _DEFAULTS.worker_id,
        block_ms: int = _DEFAULTS.block_ms,
        policy_timeout_s: float = _DEFAULTS.policy_timeout_s,
        max_policy_timeouts: int = _DEFAULTS.max_policy_timeouts,
        pool_poll_s: float = _DEFAULTS.pool_poll_s,
        vectorization: str = _DEFAULTS.vectorization,
        max_deliveries: int = _DEFAULTS.max_deliveries,
        overlap: bool = _DEFAULTS.overlap,
    ) -> None:
        """A worker on ``settings`` (or the environment's); defaults: ``SimWorkerConfig``'s.
        Bad options raise ``ConfigError`` here, before anything starts."""
        self.config = SimWorkerConfig(
            num_envs=num_envs, lease_ms=lease_ms, block_ms=block_ms,
            policy_timeout_s=policy_timeout_s, max_policy_timeouts=max_policy_timeouts,
            pool_poll_s=pool_poll_s, vectorization=vectorization,
            max_deliveries=max_deliveries, overlap=overlap, worker_id=worker_id, redis=settings,
        )  # fmt: skip
        self.settings = self.config.settings
        self.keys = Keys(self.settings.prefix)
        self._r = client if client is not None else connect(self.settings)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.units_done = 0
        self.units_deferred = 0
        self._deferred_in_a_row = 0
        self._stop = threading.Event()
        self._lease: Lease | None = None
        self._joined = False
        cfg = self.config
        self.queue = UnitQueue(
            self._r, self.keys, self.worker_id,
            lease_ms=cfg.lease_ms, block_ms=cfg.block_ms, max_deliveries=cfg.max_deliveries,
        )  # fmt: skip
        clients = PoolClients(
            self.settings, self._r, timeout_s=cfg.policy_timeout_s, should_stop=self._lease_aborted
        )
        self.runner = UnitRunner(self._r, self.keys, self.worker_id, cfg, clients)
        self.heartbeat = Heartbeat(
            self._r, self.keys, self.queue,
            lease_ms=cfg.lease_ms, held=lambda: self._lease, status=self._status,
        )  # fmt: skip

    @classmethod
    def from_config(
        cls, config: SimWorkerConfig, *, client: redis.Redis | None = None
    ) -> SimWorker:
        """The worker ``config`` describes (its Redis: ``client``, else ``config.settings``)."""
        return cls(config.redis, client=client, **config.knobs())

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        """Stop the loop; the running unit is aborted and handed back at once."""
        self._stop.set()
        lease = self._lease
        if lease is not None:
            lease.stop("worker stopping")

    def join(self) -> None:
        """Join the unit queue and publish the first heartbeat: the first writes, so a Redis
        user without the sim role is refused here, before the worker says it is serving."""
        if not self._joined:
            self.queue.join()
            self.heartbeat.beat()
            self._joined = True

    def run(self, *, burst: bool = False) -> int:
        """Process units until stopped; ``burst`` returns once nothing is queued or pending."""
        self.join()
        self.heartbeat.start(self._stop)
        try:
            while not self._stop.is_set():
                try:
                    unit = self.queue.next_unit()
                    if unit is None:
                        if burst and self.queue.empty():
                            break
                        continue
                    if self.process(unit) is Outcome.DEFER:
                        self._pace_deferrals()
                    else:
                        self._deferred_in_a_row = 0
                except REDIS_DOWN as exc:
                    log.warning("lost Redis (%s); retrying", exc)
                    self._stop.wait(0.5)
                except ResponseError as exc:
                    if not streams.group_lost(exc):
                        raise
                    log.warning("unit stream or group vanished (%s); recreating", exc)
                    self.queue.join()
        finally:
            self._stop.set()
            self.heartbeat.join(2.0)
            self._close()
        return self.units_done

    def _close(self) -> None:
        self.runner.close()
        with contextlib.suppress(Exception):
            self.queue.leave()
        with contextlib.suppress(Exception):
            fleet.deregister(self._r, self.keys, self.worker_id)

    # -- one unit ------------------------------------------------------------------
    def process(self, unit: WorkUnit) -> Outcome:
        """Run one unit to an outcome and settle it on the stream."""
        try:
            job = jobs.get_job(self._r, self.keys, unit.job_id)
        except JobNotFound:
            job = None
        if job is None or job.state.terminal:
            self.queue.settle(unit, Outcome.DROP)
            return Outcome.DROP
        lease = Lease(unit)
        self._lease = lease
        if self._stop.is_set():
            lease.stop("worker stopping")
        try:
            outcome = self.runner.execute(job, lease)
        finally:
            self._lease = None
        self.queue.settle(unit, outcome)
        if outcome is Outcome.DEFER:
            self.units_deferred += 1
            log.debug("unit %s of job %s: deferred", unit.indices, job.job_id)
            return outcome
        log.info("unit %s of job %s: %s %s", unit.indices, job.job_id, outcome.value, lease.reason)
        self.units_done += 1
        return outcome

    def _pace_deferrals(self) -> None:
        """After a whole round of deferred units, wait ``pool_poll_s`` instead of spinning."""
        self._deferred_in_a_row += 1
        if self._deferred_in_a_row >= max(1, self.queue.depth()):
            self._deferred_in_a_row = 0
            self._stop.wait(self.config.pool_poll_s)

    def _status(self) -> dict[str, Any]:
        return worker_status(
            self.config, units_done=self.units_done, stopping=self._stop.is_set(),
            lease=self._lease,
        )  # fmt: skip

    def _lease_aborted(self) -> bool:
        """True once the running unit must stop: a stop signal, a cancel, a lost lease."""
        lease = self._lease
        return self._stop.is_set() or (lease is not None and lease.abort.is_set())


def serve(
    worker: SimWorker, *, burst: bool = False, on_joined: Callable[[], None] | None = None
) -> int:
    """Run ``worker`` until SIGTERM/SIGINT/SIGHUP, which hand the running unit back and exit
    cleanly. ``on_joined`` runs once the worker has joined (the CLI says "serving" there)."""
    with stop_on_signals(worker.stop, "handing the running unit back"):
        worker.join()  # inside the handlers: once it is visible as live, a signal stops it cleanly
        telemetry.ready("env")
        if on_joined is not None:
            on_joined()
        return worker.run(burst=burst)

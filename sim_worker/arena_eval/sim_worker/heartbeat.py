"""The sim worker's heartbeat: it is alive, what it does, its unit's lease, and cancels.

Why a thread of its own: a rollout may step for seconds without looking at
Redis, yet the worker must stay visible as live, keep its unit's lease, and
notice a cancelled job within about a second. A few times per lease period
(``broker.fleet.HEARTBEAT_INTERVAL_S``, or a third of a shorter lease) the
thread, in one pipelined round trip, writes the worker's record (liveness is
that key's TTL, ``broker/fleet.py``) and reads the held unit's job state. Then:

* a terminal or deleted job aborts the unit (the rollout polls the abort event
  once per step), so a cancel stops the run within about a second;
* otherwise it renews the unit's lease, owner-checked: if another worker took
  the unit over (this one stalled past its lease), the run aborts as
  ``LEASE_LOST`` and the unit is left to its new owner.

A worker killed with -9 stops beating: its record expires and, ``lease_ms``
later, another worker takes its unit over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis

from arena_eval.broker import fleet, jobs
from arena_eval.broker.fields import as_text
from arena_eval.broker.keys import Keys
from arena_eval.sim_worker.config import SimWorkerConfig
from arena_eval.sim_worker.lease import LEASE_LOST, Lease
from arena_eval.sim_worker.unit_queue import UnitQueue

log = logging.getLogger("arena_eval.sim_worker")


def worker_status(
    config: SimWorkerConfig, *, units_done: int, stopping: bool, lease: Lease | None
) -> dict[str, Any]:
    """What ``arena-eval workers`` shows about a sim worker, and ``status`` hints read."""
    data: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "num_envs": config.num_envs,
        "lease_ms": config.lease_ms,
        "units_done": units_done,
        "state": "stopping" if stopping else "idle",
    }
    if lease is not None:
        u = lease.unit
        data.update(
            state=lease.phase, job=u.job_id, unit=f"{u.start}-{u.start + u.count}",
            unit_episodes=u.count, episodes_done=lease.episodes_done,
        )  # fmt: skip
    return data


class Heartbeat:
    """Beat once (``beat``) or on a thread until a stop event is set (``start``/``join``)."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        queue: UnitQueue,
        *,
        lease_ms: int,
        held: Callable[[], Lease | None],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self._r = r
        self.keys = keys
        self.queue = queue
        self.interval_s = min(fleet.HEARTBEAT_INTERVAL_S, lease_ms / 3000.0)
        self._held = held
        self._status = status
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Publish the record; abort the held unit if its job ended or its lease was lost."""
        lease = self._held()
        pipe = self._r.pipeline(transaction=False)
        fleet.heartbeat(pipe, self.keys, self.queue.worker_id, self._status())
        if lease is not None:
            pipe.hget(self.keys.job(lease.unit.job_id), "state")
        replies = pipe.execute()
        if lease is None:
            return
        state = as_text(replies[-1]) if replies[-1] is not None else "deleted"
        if state == "deleted" or jobs.JobState(state).terminal:
            lease.stop(f"job {state}")
        elif not self.queue.renew(lease.unit):
            lease.stop(LEASE_LOST)

    def start(self, stop: threading.Event) -> None:
        """Beat on a daemon thread every ``interval_s`` until ``stop`` is set."""
        self._thread = threading.Thread(
            target=self._loop, args=(stop,), name="sim-heartbeat", daemon=True
        )
        self._thread.start()

    def join(self, timeout_s: float = 2.0) -> None:
        """Wait for the thread (after the stop event was set)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # Redis away: the main loop reconnects; keep beating
                log.debug("heartbeat failed: %s", exc)

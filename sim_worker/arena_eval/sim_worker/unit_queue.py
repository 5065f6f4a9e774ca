"""A sim worker's side of the shared unit queue: take a unit, settle it, renew it, leave.

Why apart from the rollout: this is the unit *lease* -- which unit this worker
runs next and what happens to it on the stream -- and it knows nothing of envs,
pools or episodes. The stream commands themselves live in ``broker/units.py``.

* A unit whose lease lapsed (its worker died) is taken over first, looked for
  every half lease; otherwise the worker blocks on the queue for a new one.
* A unit taken over more than ``max_deliveries`` times fails its job (its
  workers keep dying on it) instead of killing more workers.
* A finished unit is acked and deleted; a handed-back one goes to the tail of
  the queue as a fresh entry, which does not count as a delivery.
"""

from __future__ import annotations

import logging
import time

import redis

from arena_eval.broker import jobs, reconcile, streams, units
from arena_eval.broker.constants import SIM_GROUP
from arena_eval.broker.keys import Keys
from arena_eval.broker.units import WorkUnit
from arena_eval.sim_worker.lease import Outcome

#: An idle worker looks for jobs stuck by lost writes this often (``broker/reconcile.py``).
RECONCILE_EVERY_S = 5.0

log = logging.getLogger("arena_eval.sim_worker")


class UnitQueue:
    """The unit stream as seen by one consumer (``worker_id``) of the sim group."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        worker_id: str,
        *,
        lease_ms: int,
        block_ms: int,
        max_deliveries: int,
    ) -> None:
        self._r = r
        # claim replies differ between Redis 6.2 and 7: units.claim_stale parses raw replies
        self._raw = streams.raw_client(r)
        self.keys = keys
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self.block_ms = block_ms
        self.max_deliveries = max_deliveries
        self._next_claim = 0.0
        self._next_reconcile = time.monotonic() + RECONCILE_EVERY_S

    def join(self) -> None:
        """Create the unit group if it is missing (idempotent)."""
        units.ensure_units_group(self._r, self.keys)

    def next_unit(self) -> WorkUnit | None:
        """A unit whose lease lapsed (checked every lease/2), else a new one (blocking read)."""
        found: list[WorkUnit | str] = []
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(0.2, self.lease_ms / 2000.0)
            found, deleted = units.claim_stale(self._raw, self.keys, self.worker_id, self.lease_ms)
            units.finish(self._r, self.keys, *deleted)
            if found and isinstance(found[0], WorkUnit) and self._poisoned(found[0]):
                return None
        if not found:
            found = units.read_new(self._r, self.keys, self.worker_id, self.block_ms)
        if not found and now >= self._next_reconcile:
            self._next_reconcile = now + RECONCILE_EVERY_S
            for repair in reconcile.reconcile(self._r, self.keys):
                log.warning("reconciled job %s after lost writes: %s", repair.job_id, repair)
        for item in found:
            if isinstance(item, WorkUnit):
                return item
            log.warning("dropping malformed unit entry %s", item)
            units.finish(self._r, self.keys, item)
        return None

    def _poisoned(self, unit: WorkUnit) -> bool:
        """Fail the job of a unit whose workers keep dying on it, instead of retrying forever."""
        n = units.deliveries(self._r, self.keys, unit.entry_id)
        log.info("took over %s (lease lapsed; delivery %d)", unit, n)
        if n <= self.max_deliveries:
            return False
        end = unit.start + unit.count - 1
        jobs.fail(
            self._r, self.keys, unit.job_id,
            f"episodes {unit.start}-{end} were taken over {n - 1} times: each sim worker "
            f"running them died or stalled past its lease (max {self.max_deliveries} "
            "deliveries); check the sim workers' logs for a simulator crash",
        )  # fmt: skip
        units.finish(self._r, self.keys, unit.entry_id)
        return True

    def settle(self, unit: WorkUnit, outcome: Outcome) -> None:
        """Ack and delete a finished unit, hand back a requeued or deferred one; a lost
        unit is left to the worker that holds it now."""
        if outcome.finishes:
            units.finish(self._r, self.keys, unit.entry_id)
        elif outcome.hands_back:
            units.requeue(self._r, self.keys, unit, self.worker_id)

    def renew(self, unit: WorkUnit) -> bool:
        """Renew this worker's lease on ``unit``; False if another worker holds it now."""
        return units.renew(self._r, self.keys, unit.entry_id, self.worker_id)

    def depth(self) -> int:
        """Units waiting in the queue (not counting the pending ones)."""
        return int(self._r.xlen(self.keys.units()))

    def empty(self) -> bool:
        """Nothing queued and nothing pending on any worker (``--burst`` is done)."""
        if self.depth():
            return False
        summary = self._r.xpending(self.keys.units(), SIM_GROUP)
        return not int(summary.get("pending", 0))

    def leave(self) -> None:
        """Leave the unit group (the worker is stopping)."""
        units.leave_group(self._r, self.keys, self.worker_id)

"""The policy worker's leases on requests: take over the abandoned, keep our own alive.

Why apart from the loop: a request read through the pool's consumer group
stays pending on this worker until it is answered, and its *lease* is its idle
time in the pending list. Two duties follow, both on the ``ConsumerGroup``:

* ``reclaim_due``: every ``claim_idle_ms / 2`` (at least 50 ms), take over
  requests idle past ``claim_idle_ms`` -- their worker died -- and dead-letter
  those delivered more than ``max_deliveries`` times (they kill workers).
* ``renew`` (from the heartbeat thread): while ``infer`` runs, reset the lease
  of the batch in flight and of the requests waiting behind it, so a slow but
  healthy forward pass is never taken over. The renewal is owner-checked, like
  the sim's unit leases: a request another worker legally took over (our lease
  lapsed in a long pause) is left to it, not stolen back. After
  ``hung_after_s`` inside one ``infer`` the worker counts as hung and stops
  renewing, so live workers take its requests over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from redis.exceptions import ResponseError

from arena_eval.broker import streams
from arena_eval.broker.consumer_group import ConsumerGroup
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.entries import Pending
from arena_eval.policy_worker.stats import WorkerStats

__all__ = ["RequestLeases"]

log = logging.getLogger("arena_eval.policy_worker")

#: Decodes a claimed entry, or marks it over-delivered given its delivery count.
Admit = Callable[[Pending, int], Pending]


class RequestLeases:
    """Reclaim and renewal of request leases for one worker's ``ConsumerGroup``."""

    def __init__(
        self,
        group: ConsumerGroup,
        config: PolicyWorkerConfig,
        *,
        admit: Admit,
        stats: WorkerStats,
    ) -> None:
        self.group = group
        self.claim_idle_ms = config.claim_idle_ms
        self.claim_count = config.max_batch  # takes over at most one batch per stream and scan
        self.hung_after_s = config.hung_after_s
        self._admit = admit
        self._stats = stats
        self._next_claim = 0.0
        #: (monotonic start, batch) while ``infer`` runs; read by the heartbeat thread.
        self._busy: tuple[float, list[Pending]] | None = None

    # -- taking over -----------------------------------------------------------------------
    def reclaim_due(self) -> list[Pending]:
        """Requests taken over from dead workers, if a scan is due (else none)."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + max(0.05, self.claim_idle_ms / 2000.0)
        out: list[Pending] = []
        for stream in self.group.streams:
            out.extend(self._reclaim(stream))
        return out

    def _reclaim(self, stream: str) -> list[Pending]:
        try:
            claimed, deleted = self.group.autoclaim(stream, self.claim_idle_ms, self.claim_count)
        except ResponseError as exc:
            if streams.group_lost(exc):
                return []
            raise
        if deleted:  # trimmed while pending: nothing to serve, just clear the PEL
            self.group.ack_and_delete(stream, deleted)
        if not claimed:
            return []
        counts = self.group.deliveries(stream, [eid for eid, _ in claimed])
        now = time.time()
        out = [
            self._admit(Pending(stream, eid, fields or {}, now), counts.get(eid, 1))
            for eid, fields in claimed
        ]
        self._stats.reclaimed += len(out)
        return out

    # -- keeping ours ----------------------------------------------------------------------
    @contextlib.contextmanager
    def holding(self, batch: list[Pending]) -> Iterator[None]:
        """Mark ``batch`` as in ``infer``: ``renew`` keeps its leases alive meanwhile."""
        self._busy = (time.monotonic(), batch)
        try:
            yield
        finally:
            self._busy = None

    def busy_s(self) -> float:
        """Seconds inside the current ``infer`` (0 when idle): large means slow or hung."""
        busy = self._busy
        return round(time.monotonic() - busy[0], 2) if busy else 0.0

    def renew(self, waiting: Sequence[Pending] = ()) -> int:
        """Renew the batch in flight and ``waiting`` (owner-checked); return how many.

        Nothing while idle, and nothing once ``hung_after_s`` has passed in one infer.
        """
        busy = self._busy
        if busy is None:
            return 0
        since, batch = busy
        if time.monotonic() - since > self.hung_after_s:
            return 0
        by_stream: dict[str, list[bytes]] = {}
        for p in [*batch, *waiting]:  # waiting behind this batch: not abandoned either
            by_stream.setdefault(p.stream, []).append(p.entry_id)
        renewed = 0
        for stream, ids in by_stream.items():
            kept = self.group.renew(stream, ids)
            renewed += len(kept)
            if len(kept) < len(ids):
                log.info("%d request(s) on %s were taken over by another worker",
                         len(ids) - len(kept), stream)  # fmt: skip
        return renewed

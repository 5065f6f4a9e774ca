"""Which requests go into one ``policy.infer`` call: the ``Batcher`` protocol and its default.

Why pluggable: the batching window is the one policy decision in the serve
loop that trades latency for throughput, and deployments want different
trades (a fixed batch for a benchmark, a deadline-aware window, a per-client
fair share). A batching policy is one class taking a ``PolicyWorkerConfig``
(``PolicyWorkerConfig.batcher``); the loop calls only the methods of the
``Batcher`` protocol (defined in ``batching.py``, next to the row cap it must keep).

The default, ``WindowBatcher``, waits at most ``max_wait_ms`` after the first
request for more rows, up to ``max_batch``, and stops early once every client
active in the last ``active_client_s`` has a request in the batch: nobody else
is coming, so waiting longer is pure latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from arena_eval.policy_worker.batching import (
    Batcher,
    ReadMore,
    read_count,
    take_rows,
    total_rows,
)
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.entries import Pending, rows

__all__ = ["Batcher", "WindowBatcher"]

#: How long the window sleeps between non-blocking reads.
_POLL_S = 0.0002


class WindowBatcher:
    """Wait up to ``max_wait_ms`` for up to ``max_batch`` rows; stop once all active
    clients are in."""

    def __init__(self, config: PolicyWorkerConfig) -> None:
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_ms / 1000.0
        self.active_client_s = config.active_client_s
        self._recent_clients: dict[str, float] = {}
        self._rows_per_request = 1

    def read_count(self, rows_in_hand: int) -> int:
        return read_count(self.max_batch, rows_in_hand, self._rows_per_request)

    def gather(
        self, items: list[Pending], read_more: ReadMore, stopping: Callable[[], bool]
    ) -> list[Pending]:
        n_rows = total_rows(items)
        now = time.monotonic()
        deadline = now + self.max_wait_s
        clients = self._note_clients(items, now)
        expected = self._expected_clients(now)
        # Redis only expires a BLOCK timeout on its next cron tick (up to 1000/hz ms,
        # 100 ms by default), so the window polls without BLOCK instead.
        while n_rows < self.max_batch and len(clients) < expected and not stopping():
            more = read_more(self.read_count(n_rows))
            if more:
                items.extend(more)
                n_rows += total_rows(more)
                clients |= self._note_clients(more, time.monotonic())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, _POLL_S))
        return items

    def take(self, items: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        return take_rows(items, self.max_batch)

    def served(self, batch: Sequence[Pending]) -> None:
        requests = sum(1 for p in batch if p.request is not None)
        self._rows_per_request = max(1, sum(rows(p) for p in batch) // max(1, requests))

    def _note_clients(self, items: list[Pending], now: float) -> set[str]:
        seen = {p.request.client for p in items if p.request is not None}
        for client in seen:
            self._recent_clients[client] = now
        return seen

    def _expected_clients(self, now: float) -> int:
        """How many clients sent requests within ``active_client_s`` (at least 1)."""
        horizon = now - self.active_client_s
        for client in [c for c, t in self._recent_clients.items() if t < horizon]:
            del self._recent_clients[client]
        return max(1, len(self._recent_clients))

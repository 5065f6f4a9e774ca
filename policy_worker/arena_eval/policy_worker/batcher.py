"""Which requests go into one ``policy.infer`` call: the ``Batcher`` protocol and its default.

Why pluggable: the batching window is the one policy decision in the serve
loop that trades latency for throughput, and deployments want different
trades (a fixed batch for a benchmark, a deadline-aware window, a per-client
fair share). A batching policy is one class taking a ``PolicyWorkerConfig``
(``PolicyWorkerConfig.batcher``); the loop calls only the methods of the
``Batcher`` protocol (defined in ``batching.py``, next to the row cap it must keep).

The default, ``WindowBatcher``, waits at most ``max_wait_ms`` after the first
request for more rows, up to ``max_batch``, and stops early once every client
it still expects has a request in the batch: nobody else is coming, so
waiting longer is pure latency.

Which clients it expects is learned. A sim sends its next request one period
after its last (env step + round trip); the batcher keeps each client's
period (a moving average of the gaps between its requests) and expects a
client only until ``_PATIENCE`` periods (plus ``_SLACK_S`` of jitter) after its
last request, and only when that next request is due within the window: the
two lanes of an ``--overlap`` sim are two clients half a period apart, and
waiting for the lane that was just answered would undo the overlap. A
client that closed, crashed or stalls (a long reset) thus
stops holding every batch open after about two of its periods -- before, it was expected for
``active_client_s`` (1 s), and every batch in that second waited the full
``max_wait_ms`` for it. A client seen only once has no period yet and is
expected for ``active_client_s``, as before.

Better than the period, when the client says it: each request carries its ``think_ms``, the
client's time from its previous answer to this request (its env step, mostly; measured on
its own clock). The worker notes when it sent each client's answer (``replied``), so a
client that was answered and has not asked again is due at ``answered + think``. The
period cannot tell that: it is the gap between two *reads*, and a request that waited in
the stream while the model ran is read late. Measured with four sims on a 20 ms model
(``docs/benchmarks.md``), one sim that fell a pass behind (an episode reset) split the
fleet into two groups for good: each batch was read as the other group's pass ended, the
period said the other group was a whole pass away, and the model ran two half batches per
step of every sim. With the think time the batcher sees the other group due in a few ms
and waits for it (when that fits in the window), and the groups merge again.

Profiled at 8 sims x 10 ms (docs/benchmarks.md), the batches were already whole; the rest
of the cycle is the clients' turnaround, which no batching rule can hide from synchronous
clients (``--overlap`` sims can).
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
#: A client is expected until this many of its periods after its last request,
#: plus _SLACK_S for scheduling jitter (a loaded 2-core machine delays a sim by ms).
_PATIENCE = 2.0
_SLACK_S = 0.02
#: A client whose next request (its last plus its period) is due later than the window's
#: end plus this is not waited for: the other lane of an ``--overlap`` sim, say, which
#: sends half a period after this one (its lanes are two clients).
_EARLY_S = 0.001
#: Weight of the newest gap in a client's period (an exponential moving average).
_GAP_WEIGHT = 0.25


class WindowBatcher:
    """Wait up to ``max_wait_ms`` for up to ``max_batch`` rows; stop once every client
    still expected (learned from its request period) is in."""

    def __init__(self, config: PolicyWorkerConfig) -> None:
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_ms / 1000.0
        self.active_client_s = config.active_client_s
        self._last_seen: dict[str, float] = {}  # client -> monotonic time of its last request
        self._period: dict[str, float] = {}  # client -> moving average of its request gaps
        self._think: dict[str, float] = {}  # client -> moving average of its think time (s)
        self._replied: dict[str, float] = {}  # client -> when its last answer was sent
        self._rows_per_request = 1

    def read_count(self, rows_in_hand: int) -> int:
        return read_count(self.max_batch, rows_in_hand, self._rows_per_request)

    def gather(
        self, items: list[Pending], read_more: ReadMore, stopping: Callable[[], bool]
    ) -> list[Pending]:
        n_rows = total_rows(items)
        deadline = time.monotonic() + self.max_wait_s
        clients = self._note_clients(items, time.monotonic())
        # Redis only expires a BLOCK timeout on its next cron tick (up to 1000/hz ms,
        # 100 ms by default), so the window polls without BLOCK instead.
        while n_rows < self.max_batch and not stopping():
            now = time.monotonic()
            due = self._awaited_until(clients, now)
            if due is None:
                break  # every client still expected is in the batch
            more = read_more(self.read_count(n_rows))
            if more:
                items.extend(more)
                n_rows += total_rows(more)
                clients |= self._note_clients(more, time.monotonic())
                continue
            remaining = min(deadline, due) - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, _POLL_S))
        return items

    def take(self, items: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        return take_rows(items, self.max_batch)

    def served(self, batch: Sequence[Pending]) -> None:
        requests = sum(1 for p in batch if p.request is not None)
        self._rows_per_request = max(1, sum(rows(p) for p in batch) // max(1, requests))

    def replied(self, batch: Sequence[Pending], now: float | None = None) -> None:
        """The answers to ``batch`` are being sent (the serve loop calls this as it writes)."""
        at = time.monotonic() if now is None else now
        for p in batch:
            if p.request is not None:
                self._replied[p.request.client] = at

    def _note_clients(self, items: list[Pending], now: float) -> set[str]:
        seen: set[str] = set()
        for p in items:
            if p.request is None:
                continue
            client, think_ms = p.request.client, p.request.think_ms
            seen.add(client)
            if think_ms >= 0:
                think = think_ms / 1000.0
                old = self._think.get(client)
                self._think[client] = think if old is None else old + _GAP_WEIGHT * (think - old)
        for client in seen:
            last = self._last_seen.get(client)
            if last is not None:
                gap = now - last
                old = self._period.get(client)
                self._period[client] = gap if old is None else old + _GAP_WEIGHT * (gap - old)
            self._last_seen[client] = now
        return seen

    def _due(self, client: str, now: float) -> float:
        """Until when ``client`` is expected; forgets clients past ``active_client_s``."""
        last = self._last_seen[client]
        if now - last > self.active_client_s:
            del self._last_seen[client]
            for learned in (self._period, self._think, self._replied):
                learned.pop(client, None)
            return now
        replied, think = self._replied.get(client), self._think.get(client)
        if replied is not None and think is not None and replied >= last:
            # answered since its last request: it asks again ``think`` after the answer
            if replied + think > now + self.max_wait_s + _EARLY_S:
                return now  # not due within this window: do not wait for it
            return replied + _PATIENCE * think + _SLACK_S
        period = self._period.get(client)
        if period is None:
            return last + self.active_client_s
        if last + period > now + self.max_wait_s + _EARLY_S:
            return now  # its next request is not due within this window: do not wait for it
        return last + min(self.active_client_s, _PATIENCE * period + _SLACK_S)

    def _awaited_until(self, present: set[str], now: float) -> float | None:
        """The latest time a client missing from the batch is expected by; None if none is."""
        due = [self._due(c, now) for c in list(self._last_seen) if c not in present]
        due = [d for d in due if d > now]
        return max(due) if due else None

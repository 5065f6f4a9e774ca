"""The policy worker's background thread: heartbeats, and lease renewal during ``infer``.

Why a thread: a forward pass can take seconds (a big model, a cold GPU), and
while it runs the serve loop cannot speak to Redis. The pool must still see
the worker alive (its heartbeat key has a TTL) and the requests in flight must
not look abandoned (their lease is their idle time). The thread ticks at
least three times per lease period; a tick that fails (Redis away) is logged
and retried on the next one -- the serve loop is the one that reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Heartbeat"]

log = logging.getLogger("arena_eval.policy_worker")


class Heartbeat:
    """Call ``renew`` every ``tick_s`` and ``beat`` every ``beat_s`` until ``stop`` is set."""

    def __init__(
        self,
        beat: Callable[[], None],
        renew: Callable[[], object],
        *,
        tick_s: float,
        beat_s: float,
        stop: threading.Event,
    ) -> None:
        self._beat = beat
        self._renew = renew
        self.tick_s = tick_s
        self.beat_s = beat_s
        self._stop = stop
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for the thread to see ``stop`` (a late heartbeat must not re-create the key)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self.tick_s):
            try:
                self._renew()
                if time.monotonic() - last_beat >= self.beat_s:
                    self._beat()
                    last_beat = time.monotonic()
            except Exception as exc:  # Redis away: the main loop reconnects; keep trying
                log.debug("heartbeat failed: %s", exc)

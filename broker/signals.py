"""Graceful stop on SIGTERM/SIGINT, shared by every worker process.

A worker asked to stop should finish (or hand back) what it holds, deregister
and exit 0, rather than die mid-request; orchestrators (``arena-eval up``,
docker, systemd) send SIGTERM and wait.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("arena_eval")


@contextmanager
def stop_on_signals(stop: Callable[[], None], doing: str) -> Iterator[None]:
    """Call ``stop`` on SIGTERM or SIGINT inside the block; restore the old handlers after."""

    def _graceful(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: %s, then stopping", signum, doing)
        stop()

    previous = {s: signal.signal(s, _graceful) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

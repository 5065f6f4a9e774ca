"""Graceful stop on SIGTERM/SIGINT/SIGHUP, shared by every worker process.

A worker asked to stop should finish (or hand back) what it holds, deregister
and exit 0, rather than die mid-request; orchestrators (``arena-eval up``,
docker, systemd) send SIGTERM and wait, and a worker whose supervisor dies gets
SIGTERM from the kernel (``PR_SET_PDEATHSIG``, see ``parent_death.py``). A
closed terminal (SIGHUP) stops a worker the same way, unless SIGHUP is ignored
(``nohup``), which stays so.

The local stack (``arena-eval up``/``demo``) follows the same rules, but its
stop is Ctrl-C's: ``interrupt_on_signals`` turns the three signals into
KeyboardInterrupt, so one ``except KeyboardInterrupt`` stops it in order.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

log = logging.getLogger("arena_eval")


@contextmanager
def stop_on_signals(stop: Callable[[], None], doing: str) -> Iterator[None]:
    """Call ``stop`` on SIGTERM, SIGINT or SIGHUP inside the block; restore the old handlers.

    A signal already ignored (SIGHUP under ``nohup``) stays ignored. ``stop`` runs
    inside the signal handler: it may raise to interrupt the block.
    """

    def _graceful(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: %s, then stopping", signum, doing)
        stop()

    previous = {
        s: signal.signal(s, _graceful)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt() -> None:
    raise KeyboardInterrupt


def interrupt_on_signals(doing: str) -> AbstractContextManager[None]:
    """SIGTERM and SIGHUP (and SIGINT) raise KeyboardInterrupt inside the block, like Ctrl-C."""
    return stop_on_signals(_interrupt, doing)

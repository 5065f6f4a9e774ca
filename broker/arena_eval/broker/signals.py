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
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

log = logging.getLogger("arena_eval")


@contextmanager
def stop_on_signals(
    stop: Callable[[], None], doing: str, *, in_handler: bool = False
) -> Iterator[None]:
    """Call ``stop`` on SIGTERM, SIGINT or SIGHUP inside the block; restore the old handlers.

    A signal already ignored (SIGHUP under ``nohup``) stays ignored. By default ``stop``
    runs in a watcher thread that the handler wakes through a pipe: a signal handler runs
    between two bytecodes of whatever the main thread was doing, so a ``stop`` that takes a
    lock (``threading.Event.set`` does) could wait for ever on a lock the main thread holds.
    The handler itself only writes one byte. ``in_handler=True`` calls ``stop`` in the
    handler instead, for a ``stop`` that raises to interrupt the block and takes no lock.
    """
    if in_handler:
        wake, finish = stop, _nothing
    else:
        wake, finish = _watcher(stop, doing)

    def _graceful(signum: int, _frame: FrameType | None) -> None:
        wake()

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
        finish()


_STOP, _QUIT = b"s", b"q"


def _nothing() -> None:
    pass


def _watcher(stop: Callable[[], None], doing: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A thread that calls ``stop`` for each byte ``wake`` writes; ``finish`` ends it."""
    read_fd, write_fd = os.pipe()

    def watch() -> None:
        while os.read(read_fd, 1) == _STOP:
            log.info("stop signal: %s, then stopping", doing)
            stop()

    thread = threading.Thread(target=watch, name="signal-stop", daemon=True)
    thread.start()

    def wake() -> None:
        os.write(write_fd, _STOP)  # async-signal-safe, takes no lock

    def finish() -> None:
        os.write(write_fd, _QUIT)
        thread.join(5.0)
        if not thread.is_alive():  # never close an fd a live reader might see reused
            os.close(read_fd)
            os.close(write_fd)

    return wake, finish


def _interrupt() -> None:
    raise KeyboardInterrupt


def interrupt_on_signals(doing: str) -> AbstractContextManager[None]:
    """SIGTERM and SIGHUP (and SIGINT) raise KeyboardInterrupt inside the block, like Ctrl-C."""
    return stop_on_signals(_interrupt, doing, in_handler=True)

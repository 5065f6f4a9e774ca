"""Stop the embedded Redis that a local stack started, when the stack dies without cleanup.

The embedded server daemonizes (it must outlive ``arena-eval redis start``), so
it cannot die with its parent the way the stack's workers do. ``LocalStack``
therefore starts this guard as one more child, which sets ``PR_SET_PDEATHSIG``
like the workers (``parent_death.py``): a supervisor killed with -9 leaves the
guard a SIGTERM, and so does a supervisor already gone when the guard starts,
since the handler is in place before the guard checks. The guard then gives the
workers (which got the same SIGTERM) time to hand back their units and
deregister, and stops the server. On a normal stop the stack kills the guard
first and stops the server itself, in order.

Run as ``python -m arena_eval.cli.redis_guard HOME PREFIX [POOL]``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from arena_eval.broker.signals import stop_on_signals
from arena_eval.cli.parent_death import die_with_parent_if_asked

#: How long the workers get to stop gracefully before the server goes anyway.
WORKERS_GRACE_S = 20.0


def workers_left(home: Path, prefix: str, pool: str | None) -> int:
    """Live sim workers, plus the pool's live policy workers, on the embedded server."""
    from arena_eval.broker.connection import connect
    from arena_eval.broker.embedded import EmbeddedRedis
    from arena_eval.broker.fleet import live_sim_workers
    from arena_eval.broker.keys import Keys
    from arena_eval.broker.pool import live_workers
    from arena_eval.broker.settings import RedisSettings

    settings = RedisSettings(url=EmbeddedRedis(home).url, prefix=prefix, retry_budget_s=1.0)
    keys = Keys(prefix)
    r = connect(settings)
    try:
        count = len(live_sim_workers(r, keys))
        if pool:
            count += len(live_workers(r, keys, pool))
        return count
    finally:
        r.close()


def stop_after_workers(home: Path, prefix: str, pool: str | None) -> None:
    from arena_eval.broker.embedded import EmbeddedRedis

    deadline = time.monotonic() + WORKERS_GRACE_S
    while time.monotonic() < deadline:
        try:
            if workers_left(home, prefix, pool) == 0:
                break
        except Exception:  # the server is gone or unreadable: nothing to wait for
            break
        time.sleep(0.2)
    EmbeddedRedis(home).stop()


def main(argv: list[str]) -> int:
    home, prefix = Path(argv[0]), argv[1]
    pool = argv[2] if len(argv) > 2 and argv[2] else None
    asked = threading.Event()
    for ignored in (signal.SIGINT, signal.SIGHUP):  # only the stack's death concerns us
        signal.signal(ignored, signal.SIG_IGN)
    # The handler stays in place to the end: a supervisor with several threads that dies
    # sends one SIGTERM per thread (each exit reparents the guard to the next thread), and
    # none of the later ones may cut the stop short. Not ``asked.set`` in the handler
    # itself: nested in the previous handler, it would wait for ever on the lock that one
    # holds (see broker/signals.py).
    with stop_on_signals(asked.set, "stopping the embedded Redis after the workers"):
        die_with_parent_if_asked()
        asked.wait()
        stop_after_workers(home, prefix, pool)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

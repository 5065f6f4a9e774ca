"""Double-buffered rollout: one lane's policy request is in flight while the other lane steps.

Why: the synchronous loop alternates "step every env" and "wait for the pool", so the sim
core idles during inference and the pool idles during stepping. With the env slots split
into two lanes (two envs, two chunked policies, each over its own ``PolicyClient``: its own
connection and reply stream), lane A's ``decide`` -- at most one request and the blocking
read of its answer, which spends its time in a socket wait that releases the GIL -- runs on
one background thread while the main thread runs lane B's ``advance`` (the env step;
MuJoCo and numpy release the GIL for much of it), then the roles swap. Per sim core the
cycle is ``max(step, inference)`` per half instead of ``step + inference``.

Why results stay identical: a lane's actions depend only on its own observations
(``decide`` reads nothing the other lane writes), a row's action only on its own row, and
an episode's outcome only on its seed (``lane.py``). The interleaving decides *when* a
step happens, never *what* it computes. Episodes go to whichever lane frees a slot first,
as they go to whichever slot or worker frees first in the synchronous loop.

The GIL: a Meta-World step is mostly Python, so the main thread holds the GIL most of the
time, and the background thread gets it back -- to send its request, and again to read the
answer -- only when the interpreter makes the main thread drop it: every 5 ms by default,
longer than the request itself. For the length of the loop the switch interval is lowered
to ``SWITCH_INTERVAL_S`` (and restored after), so a request goes out and its answer is
taken within a fraction of a millisecond while the other lane steps.

Failure paths: an error of the background request (``RemotePolicyError``,
``PolicyTimeout``, ``PolicyInterrupted``) is raised by ``Future.result`` on the main
thread, exactly where the synchronous loop would have raised it. If the main thread fails
(a simulator error) or is told to stop while a request is in flight, it first waits for
that request to end -- bounded by the client's timeout, and cut short within a second by a
stop or cancel through the client's ``should_stop`` -- so no thread outlives the rollout
and no client is used by two threads; an error of that request is raised after a stop,
and dropped behind the main thread's own error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from arena_eval.sim_worker.lane import Decision, Lane

#: The interpreter's GIL switch interval while lanes overlap (the default is 5 ms).
SWITCH_INTERVAL_S = 0.0005


def run_pair(first: Lane, second: Lane, should_stop: Callable[[], bool]) -> None:
    """Run both lanes until the shared queue and their slots are empty, or ``should_stop``.

    Both lanes must have been started (``Lane.start``).
    """
    lanes = (first, second)
    with (
        _switch_often(),
        ThreadPoolExecutor(1, thread_name_prefix="arena-overlap") as background,
    ):
        flight: Future[Decision] | None = None
        try:
            flight = _launch(background, first)
            ready = second.decide() if second.busy else None  # both requests out at once
            cur = 0  # lanes[cur]: its request is in flight; lanes[1 - cur] holds ``ready``
            while flight is not None or ready is not None:
                if should_stop():
                    break
                if ready is not None:
                    lanes[1 - cur].advance(ready)  # steps while lanes[cur]'s request is out
                done, flight = flight, None
                ready = done.result() if done is not None else None
                flight = _launch(background, lanes[1 - cur])
                cur = 1 - cur
        except BaseException:
            _drain(flight, raise_error=False)
            raise
        _drain(flight, raise_error=True)


@contextmanager
def _switch_often() -> Iterator[None]:
    """Lower the GIL switch interval for the block (never raise it), then restore it."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _launch(background: ThreadPoolExecutor, lane: Lane) -> Future[Decision] | None:
    """``lane``'s next decision: on the background thread when it asks the pool, else here
    at once (a chunk still holds its actions: no thread hop for nothing)."""
    if not lane.busy:
        return None
    if lane.will_request():
        return background.submit(lane.decide)
    done: Future[Decision] = Future()
    done.set_result(lane.decide())
    return done


def _drain(flight: Future[Decision] | None, *, raise_error: bool) -> None:
    """Wait for a request still in flight; raise its error if asked."""
    if flight is None:
        return
    error = flight.exception()  # waits: bounded by the client's timeout and should_stop
    if error is not None and raise_error:
        raise error

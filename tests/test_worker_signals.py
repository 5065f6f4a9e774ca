"""A worker whose terminal closes (SIGHUP) stops gracefully, as on SIGTERM; the local stack
stops on the same signals as on Ctrl-C."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from arena_eval.broker.fleet import live_sim_workers
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import interrupt_on_signals
from tests.worker_procs import procs, wait_until

pytest.importorskip("gymnasium")


@pytest.mark.slow
def test_sim_worker_stops_gracefully_on_hang_up(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    with procs(settings, tmp_path) as running:
        sim = running.cli("sim", "serve", "--num-envs", "1", name="sim")
        wait_until(lambda: live_sim_workers(r, keys), 60, "the sim worker", [sim])
        sim.send_signal(signal.SIGHUP)
        assert sim.wait(60) == 0, running.log_of(sim)
        assert live_sim_workers(r, keys) == []  # it deregistered on its way out


def test_the_stack_stops_on_signals_like_ctrl_c_and_nohup_is_kept() -> None:
    """``up``/``demo``: SIGTERM raises KeyboardInterrupt; a SIGHUP ignored by nohup stays so."""
    term_before = signal.getsignal(signal.SIGTERM)
    hup_before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with interrupt_on_signals("stopping the stack"):
            os.kill(os.getpid(), signal.SIGHUP)  # no interrupt
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
        assert signal.getsignal(signal.SIGTERM) is term_before
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, hup_before)


_STOP_TAKES_A_LOCK_THE_MAIN_THREAD_HOLDS = """
import os, signal, threading, time
from arena_eval.broker.signals import stop_on_signals

lock = threading.Lock()  # like the Condition lock inside threading.Event.set
stopped = threading.Event()

def stop():
    with lock:
        stopped.set()

with stop_on_signals(stop, "testing"):
    with lock:  # the signal lands while the main thread holds the lock stop() needs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    assert stopped.wait(10), "stop() never ran"
print("stopped")
"""


def test_a_stop_that_takes_a_lock_never_deadlocks_the_signal_handler() -> None:
    """A handler runs between two bytecodes of the main thread; a ``stop`` called there that
    waits for a lock the main thread holds would wait for ever. ``stop`` runs elsewhere."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _STOP_TAKES_A_LOCK_THE_MAIN_THREAD_HOLDS],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr

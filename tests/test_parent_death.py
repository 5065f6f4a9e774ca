"""A child named ``ARENA_PARENT_PID`` dies with that parent, even one already gone.

Real processes: a parent killed with -9, a parent that exited before the child
started. ``prctl`` is Linux only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from arena_eval.cli.parent_death import PARENT_PID_ENV
from tests.worker_procs import REPO, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux")

_PR_GET_PDEATHSIG = 2

# The child: asks to die with its parent, says so, then waits to be killed.
_CHILD = textwrap.dedent(
    f"""
    import ctypes, os, time
    from arena_eval.cli.parent_death import die_with_parent_if_asked
    die_with_parent_if_asked()
    sig = ctypes.c_int()
    ctypes.CDLL(None).prctl({_PR_GET_PDEATHSIG}, ctypes.byref(sig), 0, 0, 0)
    print("ready", os.environ.get("{PARENT_PID_ENV}"), sig.value, flush=True)
    time.sleep(300)
    """
)

# The parent: starts the child as the stack does, prints its pid, waits to be killed.
_PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from arena_eval.cli.parent_death import env_for_child
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env_for_child(os.environ),
                             start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(300)
    """
)


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_dies_with_a_parent_killed_with_9() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    child_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        # the child's line: the variable is not passed on, the death signal is set
        assert parent.stdout.readline().split() == ["ready", "None", str(int(signal.SIGTERM))]
        parent.kill()
        parent.wait(30)
        wait_until(lambda: _gone(child_pid), 30, "the orphaned child to exit")
    finally:
        parent.kill()
        if child_pid and not _gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_a_worker_whose_stack_is_already_gone_stops_at_start() -> None:
    """The stack died between starting the child and the child's prctl."""
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "--help"],
        cwd=REPO, env={**os.environ, PARENT_PID_ENV: str(_dead_pid())},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == -signal.SIGTERM, out.stdout + out.stderr
    assert out.stdout == ""


def test_the_redis_guard_of_a_stack_already_gone_stops_at_once(tmp_path: Path) -> None:
    """It does what it does on the stack's death: stop the server (none here), and exit."""
    guard = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli.redis_guard", str(tmp_path / "home"), "t:"],
        cwd=REPO, env={**os.environ, PARENT_PID_ENV: str(_dead_pid())},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert guard.returncode == 0, guard.stdout + guard.stderr


def test_without_the_variable_nothing_changes() -> None:
    env = {k: v for k, v in os.environ.items() if k != PARENT_PID_ENV}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.replace("time.sleep(300)", "")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert child.stdout.split() == ["ready", "None", "0"], child.stderr


def test_the_redis_guard_stops_the_server_through_a_burst_of_sigterms(tmp_path: Path) -> None:
    """A supervisor with several threads that dies sends its child one SIGTERM per thread.

    None of the later ones may kill the guard before it stopped the server, nor deadlock
    it (an ``Event.set`` in a handler nested in another's waits for ever on its lock).
    """
    from arena_eval.broker.embedded import EmbeddedRedis

    home = tmp_path / "home"
    server = EmbeddedRedis(home)
    server.start()
    keeper = subprocess.Popen(["sleep", "300"])  # a live "stack", so the guard waits
    guard = subprocess.Popen(
        [sys.executable, "-m", "arena_eval.cli.redis_guard", str(home), "t:"],
        cwd=REPO, env={**os.environ, PARENT_PID_ENV: str(keeper.pid)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: _handles_sigterm(guard.pid), 30, "the guard's SIGTERM handler")
        for _ in range(200):
            guard.send_signal(signal.SIGTERM)
        output = guard.communicate(timeout=60)[0]
        assert guard.returncode == 0, output
        assert server.status() is None, "the guard exited but left the server running"
    finally:
        guard.kill()
        keeper.kill()
        keeper.wait()
        server.stop()


def _handles_sigterm(pid: int) -> bool:
    """Whether ``pid`` catches SIGTERM (its SigCgt mask), i.e. its handler is in place."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False

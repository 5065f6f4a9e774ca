"""A child of the local stack asks the kernel for SIGTERM when the stack dies.

``PR_SET_PDEATHSIG`` must be set by the child itself. Setting it between fork
and exec (``preexec_fn``) is unsafe in a parent that runs threads (the Rich
spinner does, while the stack starts), and it rules out ``posix_spawn``. So
the stack only names itself in the child's environment (``ARENA_PARENT_PID``),
and the child, first thing at start-up, sets the death signal and then checks
that its parent is still that process: a stack that died before the ``prctl``
took effect would otherwise go unnoticed, so the child sends itself the
SIGTERM the kernel would have sent. The variable is removed once read, so the
child's own children do not take the stack for their parent.

The kernel sends the signal when the *thread* that started the child exits, so
the stack starts its children from its main thread. Linux only; a no-op
elsewhere.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

PARENT_PID_ENV = "ARENA_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def env_for_child(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus this process's pid, for a child that must die with this process."""
    return {**env, PARENT_PID_ENV: str(os.getpid())}


def die_with_parent_if_asked() -> None:
    """If started by the stack, get SIGTERM when it dies, or now if it already has."""
    raw = os.environ.pop(PARENT_PID_ENV, None)
    if raw is None or not sys.platform.startswith("linux"):
        return
    try:
        parent_pid = int(raw)
    except ValueError:
        print(f"arena-eval: ignoring {PARENT_PID_ENV}={raw!r}: not a pid", file=sys.stderr)
        return
    libc = ctypes.CDLL(None, use_errno=True)  # the libc this process already runs on
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        reason = os.strerror(ctypes.get_errno())
        print(f"arena-eval: cannot die with the stack (prctl: {reason})", file=sys.stderr)
        return
    if os.getppid() != parent_pid:  # the stack died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

"""Whether PushT runs on this machine: CI installs libgl1, a bare machine may not have it.

gym-pusht imports fine without ``libGL.so.1``; its OpenCV dependency fails only when an env is
built. So a PushT test asks the product's own import check and skips with the product's own
message (which names ``apt-get install libgl1`` and the headless OpenCV), never fails there.
The check runs once, in a child process: a failed OpenCV import is not something to try in
the test process itself.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

_PROBE = """
from arena_eval.sim_worker.envs.errors import MissingSimDependency
from arena_eval.sim_worker.envs.pusht_env import _import_pusht
try:
    _import_pusht()
except MissingSimDependency as exc:
    print(exc)
"""


@functools.lru_cache(maxsize=1)
def pusht_problem() -> str | None:
    """Why PushT cannot run here, in the product's words, or None."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        return f"the PushT probe failed: {out.stderr.strip()[-500:]}"
    return out.stdout.strip() or None


def skip_without_pusht() -> None:
    problem = pusht_problem()
    if problem is not None:
        pytest.skip(problem)

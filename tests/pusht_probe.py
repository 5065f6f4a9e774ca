"""Whether PushT runs on this machine: CI installs libgl1, a bare machine may not have it.

gym-pusht imports fine without ``libGL.so.1``; its OpenCV dependency fails only when an env is
built. So a PushT test asks the product's own import check and skips with the product's own
message (which names ``apt-get install libgl1`` and the headless OpenCV), never fails there.
"""

from __future__ import annotations

import pytest


def pusht_problem() -> str | None:
    """Why PushT cannot run here, in the product's words, or None."""
    try:
        import gym_pusht  # noqa: F401
    except ModuleNotFoundError:
        return "PushT needs the [pusht] extra (gym-pusht)"
    from arena_eval.sim_worker.envs.errors import MissingSimDependency
    from arena_eval.sim_worker.envs.pusht_env import _import_pusht

    try:
        _import_pusht()
    except MissingSimDependency as exc:
        return str(exc)
    return None


def skip_without_pusht() -> None:
    problem = pusht_problem()
    if problem is not None:
        pytest.skip(problem)

"""PushT (``pusht/<observation>``) as a :class:`VectorEnv`: a second real suite, with images.

Why PushT: it is the standard diffusion-policy task (LeRobot trains and evaluates on it), it
has pixel observations, and it needs no OpenGL: ``gym-pusht`` simulates with pymunk (2D) and
draws its frames with pygame on an off-screen surface, about 1-3 ms a step on one core. Its
frames are ordinary ``uint8 (H, W, 3)`` arrays, so they travel exactly like Meta-World's
camera frames: through the codec, as a shared-memory ticket when the request is large and a
policy worker runs on the same host, and through lz4 ``auto`` across a network.

Task strings (the observation layout is part of the task, because a policy is trained on one):

* ``pusht/pixels``: ``{"pixels": uint8 (96, 96, 3), "agent_pos": float64 (2,)}`` (gym-pusht's
  ``pixels_agent_pos``, the layout LeRobot's diffusion policy takes); ``pusht/pixels-<N>``
  renders ``N x N`` frames instead (e.g. ``pusht/pixels-224``);
* ``pusht/state``: ``{"state": float64 (5,)}`` = agent x, y, block x, y, block angle;
* ``pusht/keypoints``: ``{"environment_state": float64 (16,), "agent_pos": float64 (2,)}``
  (the T's eight keypoints).

Actions are the agent's target position ``(x, y)`` in ``[0, 512]^2``. Evaluation semantics are
gym-pusht's: success is coverage of the goal zone above 95 %, which ends the episode; episodes
are truncated at 300 steps (gym-pusht's registered limit) unless the job says otherwise. The
reset draws the agent and block poses from the env's own generator, reseeded by every
``reset(seed=...)``, so an episode depends only on its seed. ``coverage`` is reported as a
per-step metric (episode results keep its final and maximum value).

gym-pusht is optional (``pip install 'arena-eval[pusht]'``) and imported only inside the
factory: a Meta-World-only sim node never imports it. One packaging wart: gym-pusht depends on
``opencv-python``, whose ``cv2`` links ``libGL.so.1`` even though nothing here opens a GL
context; where that library is missing the error names the two fixes.
"""

from __future__ import annotations

import os
import re
import sys
from functools import partial
from typing import Any

from arena_eval.broker.errors import ConfigError
from arena_eval.sim_worker.envs.adapter import EnvAdapter, EnvOptions
from arena_eval.sim_worker.envs.errors import (
    MissingSimDependency,
    UnknownTask,
    require,
    unknown_task,
)
from arena_eval.sim_worker.envs.gym_env import GymVectorEnv

PREFIX = "pusht/"
#: gym-pusht's registered episode limit (``gym_pusht/PushT-v0``, ``max_episode_steps``).
MAX_STEPS = 300
#: Frame size LeRobot's PushT datasets and policies use.
DEFAULT_IMAGE_SIZE = 96
#: Our observation name -> gym-pusht's ``obs_type``.
OBS_TYPES = {
    "pixels": "pixels_agent_pos",
    "state": "state",
    "keypoints": "environment_state_agent_pos",
}
#: What a language-conditioned policy is told on every PushT row.
INSTRUCTION = "push the T-shaped block onto the green T"
_PIXELS_N = re.compile(r"^pixels-([1-9][0-9]{0,3})$")
_INSTALL = "pip install 'arena-eval[pusht]'"


def parse_task(name: str) -> tuple[str, int]:
    """``'pixels'`` -> ``('pixels_agent_pos', 96)``; ``'pixels-224'`` -> ``(..., 224)``."""
    if name in OBS_TYPES:
        return OBS_TYPES[name], DEFAULT_IMAGE_SIZE
    match = _PIXELS_N.match(name)
    if match:
        return OBS_TYPES["pixels"], int(match.group(1))
    raise unknown_task(
        f"{PREFIX}{name}",
        f"PushT tasks are {', '.join(PREFIX + k for k in OBS_TYPES)} and {PREFIX}pixels-<N> "
        "(N x N frames)",
    )


def _import_pusht() -> Any:
    """gym-pusht's env class, or an error that says how to install what is missing."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # no banner in worker logs
    try:
        import gym_pusht  # noqa: F401  (the package itself: no OpenCV yet)
    except ModuleNotFoundError as exc:
        raise MissingSimDependency(
            f"PushT tasks need gym-pusht and its dependencies (missing {exc.name!r}): {_INSTALL}"
        ) from exc
    _import_opencv()
    try:
        from gym_pusht.envs.pusht import PushTEnv
    except ModuleNotFoundError as exc:
        raise MissingSimDependency(
            f"PushT tasks need gym-pusht and its dependencies (missing {exc.name!r}): {_INSTALL}"
        ) from exc
    return PushTEnv


def _import_opencv() -> None:
    """Import OpenCV (gym-pusht needs it), undoing what a failed import leaves behind.

    OpenCV's loader puts its own folder on ``sys.path`` before it loads its native module; when
    that fails (no ``libGL.so.1``) the folder stays, and from then on ``import typing`` in this
    process finds ``cv2/typing``. A sim worker that reported the error must go on serving other
    jobs, so ``sys.path`` and the half-imported modules are put back as they were.
    """
    saved_path = list(sys.path)
    try:
        import cv2  # noqa: F401  (its libGL link is the usual failure)
    except ModuleNotFoundError as exc:
        raise MissingSimDependency(
            f"PushT tasks need gym-pusht and its dependencies (missing {exc.name!r}): {_INSTALL}"
        ) from exc
    except ImportError as exc:
        sys.path[:] = saved_path
        for name in [m for m in sys.modules if m == "cv2" or m.startswith("cv2.")]:
            del sys.modules[name]
        raise MissingSimDependency(
            f"PushT cannot import OpenCV ({exc}): gym-pusht's opencv-python links libGL.so.1 "
            "although PushT opens no GL context. Install the library (apt-get install libgl1) "
            "or replace OpenCV with its headless build (pip uninstall -y opencv-python "
            "opencv-python-headless && pip install opencv-python-headless)"
        ) from exc


def make_pusht_task(obs_type: str, image_size: int) -> Any:
    """One bare PushT env (module-level, so async vectorization can pickle the factory)."""
    env_cls = _import_pusht()
    from arena_eval.sim_worker.envs.pusht_task import PushTTask

    inner = env_cls(
        obs_type=obs_type,
        render_mode="rgb_array",
        observation_width=image_size,
        observation_height=image_size,
    )
    return PushTTask(inner)


def make_pusht_env(
    task: str,
    num_envs: int,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    vectorization: str = "sync",
) -> GymVectorEnv:
    """``num_envs`` slots of ``pusht/<observation>`` (``task`` with or without the prefix)."""
    name = task[len(PREFIX) :] if task.startswith(PREFIX) else task
    obs_type, size = parse_task(name)
    require("gymnasium", purpose="PushT tasks")
    _import_pusht()  # fail here, with the install hint, not inside a vector-env subprocess
    fn = partial(make_pusht_task, obs_type, size)
    return GymVectorEnv(
        [fn] * num_envs,
        vectorization=vectorization,
        seed=seed,
        max_steps=max_steps if max_steps is not None else MAX_STEPS,
        terminate_on_success=True,
    )


def _make(name: str, num_envs: int, options: EnvOptions) -> GymVectorEnv:
    """The task table's factory for ``pusht/<observation>``."""
    if options.camera is not None:
        raise ConfigError(
            f"PushT has no cameras (got camera={options.camera!r}): its frames are the task "
            f"{PREFIX}pixels (96x96) or {PREFIX}pixels-<N> (N x N)"
        )
    return make_pusht_env(
        name,
        num_envs,
        seed=options.seed,
        max_steps=options.max_steps,
        vectorization=options.vectorization,
    )


def instruction(name: str) -> str:
    """The language instruction of every PushT task (one goal, whatever the observations)."""
    try:
        parse_task(name)
    except UnknownTask:
        return ""
    return INSTRUCTION


ADAPTER = EnvAdapter(
    prefix=PREFIX,
    make=_make,
    instruction=instruction,
    syntax=f"'{PREFIX}pixels|state|keypoints' or '{PREFIX}pixels-<N>' (gym-pusht; {_INSTALL})",
)

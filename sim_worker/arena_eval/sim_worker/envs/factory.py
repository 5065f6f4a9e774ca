"""``make_env``: one task string -> the right adapter.

Task strings are what job specs carry, so they have to be plain text and unambiguous:

* ``metaworld/<task>``, e.g. ``metaworld/door-open-v3``: a Meta-World v3 task
  (:mod:`.metaworld_env`); the only syntax that supports ``camera``/``image_size``.
* ``gym/<EnvId>`` or a bare id registered with gymnasium, e.g. ``CartPole-v1`` (also
  ``gym/module:EnvId``, which gymnasium imports first): any gymnasium env (:mod:`.gym_env`).
* ``py:<module.path>:<factory>``: ``factory(num_envs)`` is imported and called and must return
  a batched torch env with the :class:`~.tensor_env.TensorEnv` API; it is wrapped in
  :class:`~.tensor_env.TensorEnvAdapter`. It is already batched, so ``vectorization`` does not
  apply, and cameras are the factory's business.

``seed`` seeds the reset every slot gets at construction (slot ``i`` with ``seed + i``); episodes
proper are seeded by the caller's ``reset``. ``max_steps`` truncates episodes (default: the
env's own limit, 500 for Meta-World). Anything else raises :class:`~.errors.UnknownTask`, and a
missing simulator package raises :class:`~.errors.MissingSimDependency` with the pip command.
"""

from __future__ import annotations

import importlib
from typing import Any

from arena_eval.broker.errors import ConfigError
from arena_eval.sim_worker.envs.base import VectorEnv
from arena_eval.sim_worker.envs.errors import unknown_task
from arena_eval.sim_worker.envs.gym_env import VECTORIZATIONS

METAWORLD = "metaworld/"
GYM = "gym/"
PY = "py:"


def make_env(
    task: str,
    num_envs: int,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    camera: str | None = None,
    image_size: int = 224,
    vectorization: str = "sync",
) -> VectorEnv:
    """Build ``num_envs`` slots of ``task``; see the module docstring for the syntaxes."""
    _check_common(num_envs, max_steps, image_size, vectorization)
    if task.startswith(METAWORLD):
        from arena_eval.sim_worker.envs.metaworld_env import make_metaworld_env

        return make_metaworld_env(
            task,
            num_envs,
            seed=seed,
            max_steps=max_steps,
            camera=camera,
            image_size=image_size,
            vectorization=vectorization,
        )
    if task.startswith(PY):
        if camera is not None:
            raise ConfigError(
                f"camera={camera!r} is not supported for {PY} tasks: configure cameras in "
                "the factory itself"
            )
        from arena_eval.sim_worker.envs.tensor_env import TensorEnvAdapter

        return TensorEnvAdapter(_call_factory(task, num_envs), seed=seed, max_steps=max_steps)
    if task.startswith(GYM) or _is_gym_id(task):
        if camera is not None:
            raise ConfigError(
                f"camera={camera!r} is only supported for {METAWORLD} tasks, not {task!r}"
            )
        from arena_eval.sim_worker.envs.gym_env import make_gym_env

        env_id = task[len(GYM) :] if task.startswith(GYM) else task
        if not env_id:
            raise unknown_task(task, "no gymnasium id after 'gym/'")
        return make_gym_env(
            env_id, num_envs, seed=seed, max_steps=max_steps, vectorization=vectorization
        )
    raise unknown_task(task)


def _check_common(
    num_envs: int, max_steps: int | None, image_size: int, vectorization: str
) -> None:
    if num_envs < 1:
        raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
    if image_size < 1:
        raise ConfigError(f"image_size must be >= 1, got {image_size}")
    if vectorization not in VECTORIZATIONS:
        raise ConfigError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")


def _is_gym_id(task: str) -> bool:
    """A bare id is gymnasium's if gymnasium has it registered."""
    try:
        gym: Any = importlib.import_module("gymnasium")
    except ModuleNotFoundError as exc:
        raise unknown_task(
            task,
            "(gymnasium is not installed, so bare gymnasium ids cannot be resolved: "
            "pip install 'arena-eval[sim]')",
        ) from exc
    return task in gym.envs.registry


def _call_factory(task: str, num_envs: int) -> Any:
    module_name, _, attr = task[len(PY) :].rpartition(":")
    if not module_name or not attr:
        raise unknown_task(task, "expected 'py:<module.path>:<factory>'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise unknown_task(task, f"cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise unknown_task(task, f"module {module_name!r} has no callable {attr!r}")
    return factory(num_envs)

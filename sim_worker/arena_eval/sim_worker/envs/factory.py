"""``make_env``: one task string -> the adapter the task table picks for it.

Task strings are what job specs carry, so they have to be plain text and unambiguous. The
built-in syntaxes (each adapter's module documents its own):

* ``metaworld/<task>``, e.g. ``metaworld/door-open-v3``: a Meta-World v3 task
  (:mod:`.metaworld_env`); the only built-in syntax that supports ``camera``/``image_size``.
* ``gym/<EnvId>`` or a bare id registered with gymnasium, e.g. ``CartPole-v1`` (also
  ``gym/module:EnvId``, which gymnasium imports first): any gymnasium env (:mod:`.gym_env`).
* ``py:<module.path>:<factory>``: ``factory(num_envs)`` is imported and called and must return
  a batched torch env with the :class:`~.tensor_env.TensorEnv` API (:mod:`.tensor_env`).

Other packages add syntaxes through the ``arena_eval.envs`` entry-point group
(:mod:`.registry`). ``seed`` seeds the reset every slot gets at construction (slot ``i`` with
``seed + i``); episodes proper are seeded by the caller's ``reset``. ``max_steps`` truncates
episodes (default: the env's own limit, 500 for Meta-World). A task no adapter takes raises
:class:`~.errors.UnknownTask` listing every syntax, and a missing simulator package raises
:class:`~.errors.MissingSimDependency` with the pip command.
"""

from __future__ import annotations

from arena_eval.broker.errors import ConfigError
from arena_eval.sim_worker.envs.adapter import EnvOptions
from arena_eval.sim_worker.envs.base import VectorEnv
from arena_eval.sim_worker.envs.errors import UnknownTask
from arena_eval.sim_worker.envs.gym_env import VECTORIZATIONS
from arena_eval.sim_worker.envs.registry import env_table


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
    options = EnvOptions(
        seed=seed,
        max_steps=max_steps,
        camera=camera,
        image_size=image_size,
        vectorization=vectorization,
    )
    table = env_table()
    try:
        adapter, name = table.find(task)
        return adapter.make(name, num_envs, options)
    except UnknownTask as exc:
        raise UnknownTask(f"{exc}. Task syntaxes: {table.syntaxes()}") from exc


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

"""Meta-World tasks (``metaworld/<task>``) as a :class:`VectorEnv`.

Evaluation semantics are the standard Meta-World ones: an episode *terminates* the first step
``info["success"] > 0`` and is *truncated* at ``max_steps`` (default: the task's
``max_path_length``, 500). Per-episode determinism (the outcome depends only on the reset seed,
whatever the slot ran before) comes from :class:`~.metaworld_task.MetaWorldTask`; read its
docstring for what metaworld's source does and why ``Meta-World/MT1`` is not used.

Only cameras need OpenGL: :func:`.gl.prepare` runs before a task is built and, when a camera is
asked for, picks ``MUJOCO_GL`` (``egl`` with an NVIDIA device, else ``osmesa``, unless set) and
checks that its library loads (``osmesa`` needs the system package ``libosmesa6``). Tasks without
a camera need no GL library at all.

The scripted experts are a policy (``metaworld-expert``, in the policy worker), not part of
the env: a sim node never needs them.

metaworld/gymnasium are imported lazily, inside the functions, so that this module (and the
package) import on nodes without them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from arena_eval.sim_worker.envs import gl, metaworld_tasks
from arena_eval.sim_worker.envs.adapter import EnvAdapter, EnvOptions
from arena_eval.sim_worker.envs.errors import require, unknown_task
from arena_eval.sim_worker.envs.gym_env import GymVectorEnv

PREFIX = "metaworld/"


def task_name(task: str) -> str:
    """``'metaworld/door-open-v3'`` or ``'door-open-v3'`` -> ``'door-open-v3'``."""
    return task[len(PREFIX) :] if task.startswith(PREFIX) else task


def known_tasks() -> list[str]:
    """Every Meta-World v3 task name this install provides."""
    require("metaworld", purpose="Meta-World tasks")
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def _check_task(task: str) -> str:
    name = task_name(task)
    tasks = known_tasks()
    if name not in tasks:
        raise unknown_task(
            f"{PREFIX}{name}", f"Meta-World has no task {name!r}; known: {', '.join(tasks)}"
        )
    return name


def make_metaworld_task(
    task: str,
    *,
    camera: str | None = None,
    image_size: int = 224,
    max_path_length: int | None = None,
) -> Any:
    """One bare :class:`~.metaworld_task.MetaWorldTask` (module-level so async can pickle it)."""
    gl.prepare(camera)  # in this process: async slots build their tasks in subprocesses
    require("gymnasium", purpose="Meta-World tasks")
    require("metaworld", purpose="Meta-World tasks")
    from arena_eval.sim_worker.envs.metaworld_task import MetaWorldTask

    return MetaWorldTask(
        task, camera=camera, image_size=image_size, max_path_length=max_path_length
    )


def make_metaworld_env(
    task: str,
    num_envs: int,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    camera: str | None = None,
    image_size: int = 224,
    vectorization: str = "sync",
) -> GymVectorEnv:
    """``num_envs`` slots of one Meta-World task, success-terminated and seeded per reset."""
    gl.prepare(camera)
    name = _check_task(task)
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    horizon = max_steps if max_steps is not None else int(ALL_V3_ENVIRONMENTS[name].max_path_length)
    fn = partial(
        make_metaworld_task, name, camera=camera, image_size=image_size, max_path_length=horizon
    )
    return GymVectorEnv(
        [fn] * num_envs,
        vectorization=vectorization,
        seed=seed,
        max_steps=horizon,
        terminate_on_success=True,
    )


def _make(name: str, num_envs: int, options: EnvOptions) -> GymVectorEnv:
    """The task table's factory for ``metaworld/<name>``."""
    return make_metaworld_env(
        name,
        num_envs,
        seed=options.seed,
        max_steps=options.max_steps,
        camera=options.camera,
        image_size=options.image_size,
        vectorization=options.vectorization,
    )


ADAPTER = EnvAdapter(
    prefix=PREFIX,
    make=_make,
    syntax=f"'{PREFIX}<task>' (e.g. {PREFIX}door-open-v3)",
    instruction=metaworld_tasks.instruction,
)

"""One Meta-World task as a gymnasium env whose episode depends only on its reset seed.

Imported only when a ``metaworld/`` task is built (it needs gymnasium, metaworld, mujoco).

What metaworld 3.1.1's source does, and why we do not use ``gym.make("Meta-World/MT1")``:

* ``SawyerXYZEnv.reset(seed=...)`` *ignores* its seed (it calls ``super().reset()`` without it);
  the only way to reseed is ``env.seed(s)``, which replaces ``env.np_random`` and seeds the
  action/observation/goal spaces.
* MT1 precomputes 50 goal vectors (``rand_vec``) from the *global* ``np.random`` seeded with the
  benchmark seed, and ``RandomTaskSelectWrapper`` picks one on every reset with the env's
  ``np_random``, which is never reseeded by ``reset(seed)``. So ``reset(seed=5)`` three times
  gives three different goals: the episode depends on what the slot ran before.
* ``_get_state_rand_vec()`` has a third mode, ``seeded_rand_vec=True`` with
  ``_freeze_rand_vec=False``: it draws the object/goal vector uniformly from the task's
  ``_random_reset_space`` with ``self.np_random`` (the same distribution MT1's 50 goals are
  drawn from). Every v3 env draws its reset randomness only from there (no env calls
  ``np.random`` directly), and ``MujocoEnv.reset`` clears ``MjData`` with ``mj_resetData``.

So a reset with seed ``s`` is ``env.seed(s); env.reset()`` in that mode, with the goal
observable (``_partially_observable=False``, as in MT1/MT10/MT50). ``reset_model`` runs twice
per reset (once before ``mj_resetData``, once after); both draws come from the freshly seeded
generator, so the result is still a function of ``s`` alone. We checked all 50 v3 tasks: a slot
that ran other episodes first reproduces a fresh env's trajectory bit for bit.

The observation is ``{"state": float64 (39,)}`` exactly as Meta-World returns it, plus
``f"{camera}_rgb"`` uint8 ``(H, W, 3)`` when a camera is requested: the frame MuJoCo renders
for that camera, unmodified (Meta-World's ``corner*`` cameras look upside down; flip downstream
if a model expects upright images).
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from arena_eval.broker.errors import ConfigError

STATE_DIM = 39


def camera_key(camera: str) -> str:
    """Observation key for a camera's RGB frame."""
    return f"{camera}_rgb"


class MetaWorldTask(gym.Wrapper[dict[str, np.ndarray], Any, np.ndarray, Any]):
    """A seeded-per-reset Meta-World v3 task with a dict observation; see module doc."""

    def __init__(
        self,
        task: str,
        *,
        camera: str | None = None,
        image_size: int = 224,
        max_path_length: int | None = None,
    ) -> None:
        env_cls = ALL_V3_ENVIRONMENTS[task]
        inner = env_cls(
            render_mode="rgb_array" if camera else None,
            camera_name=camera,
            width=image_size,
            height=image_size,
        )
        super().__init__(inner)
        raw: Any = inner
        raw._partially_observable = False  # goal position in the observation, as in MT1
        raw.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute bounds
        raw._freeze_rand_vec = False
        raw.seeded_rand_vec = True  # draw the goal/object vector from self.np_random
        raw._set_task_called = True  # the Task object only carries rand_vec, which we draw
        if max_path_length is not None and max_path_length > raw.max_path_length:
            raw.max_path_length = max_path_length  # else step() raises past its horizon
        self._raw = raw
        self._camera = camera
        fields: dict[str, spaces.Space[Any]] = {
            "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float64)
        }
        if camera:
            names = [inner.model.camera(i).name for i in range(inner.model.ncam)]
            if camera not in names:
                raw.close()
                raise ConfigError(
                    f"Meta-World task {task!r} has no camera {camera!r}; cameras: {names}"
                )
            fields[camera_key(camera)] = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        obs_space: Any = spaces.Dict(fields)
        self.observation_space = obs_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None:
            self._raw.seed(int(seed))
        state, info = self._raw.reset()
        return self._observe(state), info

    def step(
        self, action: Any
    ) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        state, reward, terminated, truncated, info = self._raw.step(action)
        return self._observe(state), reward, terminated, truncated, info

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {"state": state}
        if self._camera:
            obs[camera_key(self._camera)] = np.asarray(self._raw.render(), dtype=np.uint8)
        return obs

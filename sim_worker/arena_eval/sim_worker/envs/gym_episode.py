"""Per-env gymnasium wrapper that owns episode boundaries (imported only where gymnasium is).

Gymnasium's vector envs cannot step "some" envs: every call steps all of them, and with
autoreset disabled ``SyncVectorEnv`` asserts when a finished env is stepped again, while
Meta-World raises past its horizon and classic-control envs warn. Our contract says a finished
slot stays finished and may be stepped (its row is ignored) until it is reset, so this wrapper
sits under the vector env and:

* counts steps and truncates at ``max_steps`` (the env's own ``TimeLimit`` still applies);
* turns ``info["success"]`` (if the env reports it; truthy = ``> 0``) into a bool and, when
  ``terminate_on_success``, ends the episode on it (standard Meta-World evaluation);
* once done, answers further steps with the final observation, reward 0 and the final info,
  without touching the simulator;
* reports the real flags under :data:`TERMINATED` / :data:`TRUNCATED` / :data:`SUCCESS` in
  ``info`` and always returns ``terminated=truncated=False`` to gymnasium, so gymnasium never
  sees a "done" env and never autoresets or asserts;
* casts numeric scalar infos to float, because gymnasium sizes each batched info array from
  the first env that reports it (``np.zeros(N, dtype=type(value))``): an ``int`` 0 from env 0
  would silently truncate a float from env 1.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from arena_eval.sim_worker.envs.gym_flags import SUCCESS, TERMINATED, TRUNCATED

_NUMERIC = (bool, int, float, np.number, np.bool_)


class EpisodeGuard(gym.Wrapper[Any, Any, Any, Any]):
    """Step counting, success termination and the done latch for one env; see module doc."""

    def __init__(
        self, env: gym.Env[Any, Any], *, max_steps: int | None, terminate_on_success: bool
    ) -> None:
        super().__init__(env)
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self._max_steps = max_steps
        self._terminate_on_success = terminate_on_success
        self._steps = 0
        self._final: tuple[Any, dict[str, Any]] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._steps = 0
        self._final = None
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._final is not None:
            obs, info = self._final
            return obs, 0.0, False, False, info
        obs, reward, terminated, truncated, raw_info = self.env.step(action)
        self._steps += 1
        info = {k: float(v) if isinstance(v, _NUMERIC) else v for k, v in raw_info.items()}
        success = _positive(info.get("success", 0.0))
        terminated = bool(terminated) or (self._terminate_on_success and success)
        truncated = bool(truncated) or (
            self._max_steps is not None and self._steps >= self._max_steps
        )
        info[SUCCESS] = success
        info[TERMINATED] = terminated
        info[TRUNCATED] = truncated
        if terminated or truncated:
            self._final = (obs, info)
        return obs, float(reward), False, False, info


def _positive(value: Any) -> bool:
    """``value > 0`` for numbers (Meta-World reports 0.0/1.0), truthiness for anything else."""
    try:
        return float(value) > 0.0
    except (TypeError, ValueError):
        return bool(value)

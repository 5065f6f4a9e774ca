"""One gym-pusht env as arena-eval's episode guard reads it (imported only for ``pusht/``).

gym-pusht reports success as ``info["is_success"]`` (a bool) next to arrays (agent and block
poses) that are not per-step metrics; :class:`~.gym_episode.EpisodeGuard` reads
``info["success"]`` and the vector env keeps numeric scalars as metrics. So this wrapper hands
on ``success`` (0/1), ``coverage`` (the fraction of the goal zone the T covers, which is what
success thresholds at 95 %) and ``n_contacts``, and nothing else.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym


class PushTTask(gym.Wrapper[Any, Any, Any, Any]):
    """gym-pusht's env with ``success`` and numeric infos only; see the module doc."""

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        out = {
            "success": 1.0 if info.get("is_success") else 0.0,
            "coverage": float(info.get("coverage", 0.0)),
            "n_contacts": float(info.get("n_contacts", 0)),
        }
        return obs, reward, terminated, truncated, out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, _ = self.env.reset(seed=seed, options=options)
        return obs, {}

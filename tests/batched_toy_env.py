"""A tiny IsaacLab-style batched torch env for the TensorEnvAdapter tests.

Point masses in the plane move toward a goal. Everything is batched over ``num_envs`` in torch
tensors, observations are nested (``{"policy": {...}, "privileged": ...}``) and, like IsaacLab,
the env autoresets finished envs inside ``step`` (with a seed of its own choosing), which the
adapter must hide; it reports terminal observations in ``extras["final_obs"]`` unless
``final_obs=False`` (plain IsaacLab does not). Reset randomness comes only from a
``torch.Generator`` seeded with the episode seed, so an episode is a function of its seed and
actions, whatever the slot ran before.
"""

from __future__ import annotations

import numpy as np
import torch

GOAL_RADIUS = 0.05
SPEED = 0.1


class PointMassReach:
    """``num_envs`` point masses; success (and termination) within GOAL_RADIUS of the goal."""

    action_dim = 2

    def __init__(
        self,
        num_envs: int,
        *,
        episode_length: int = 60,
        final_obs: bool = True,
        device: str = "cpu",
    ) -> None:
        self.num_envs = num_envs
        self.report_final_obs = final_obs
        self.device = device
        self.episode_length = episode_length
        self.pos = torch.zeros(num_envs, 2, device=device)
        self.goal = torch.zeros(num_envs, 2, device=device)
        self.steps = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self.autoresets = 0
        self.closed = False

    def _reset_idx(self, env_ids: torch.Tensor, seeds: torch.Tensor) -> None:
        for env_id, seed in zip(env_ids.tolist(), seeds.tolist(), strict=True):
            gen = torch.Generator().manual_seed(int(seed))
            sample = torch.rand(4, generator=gen) * 2.0 - 1.0
            self.pos[env_id] = sample[:2].to(self.device)
            self.goal[env_id] = sample[2:].to(self.device)
        self.steps[env_ids] = 0

    def _obs(self) -> dict[str, object]:
        return {
            "policy": {"pos": self.pos.clone(), "to_goal": (self.goal - self.pos).clone()},
            "privileged": self.goal.clone(),
            "step": self.steps.clone(),
        }

    def reset(
        self, *, env_ids: torch.Tensor, seeds: torch.Tensor
    ) -> tuple[dict[str, object], dict[str, object]]:
        self._reset_idx(env_ids, seeds)
        return self._obs(), {}

    def step(
        self, actions: torch.Tensor
    ) -> tuple[dict[str, object], torch.Tensor, torch.Tensor, torch.Tensor, dict[str, object]]:
        assert actions.dtype == torch.float32 and actions.shape == (self.num_envs, 2)
        self.pos = self.pos + SPEED * actions.clamp(-1.0, 1.0)
        self.steps += 1
        dist = torch.linalg.vector_norm(self.goal - self.pos, dim=-1)
        success = dist < GOAL_RADIUS
        terminated = success.clone()
        truncated = self.steps >= self.episode_length
        extras: dict[str, object] = {
            "success": success,
            "dist": dist,
            "log": {"mean_dist": dist.mean()},
        }
        done = terminated | truncated
        if self.report_final_obs:
            extras["final_obs"] = self._obs()
        if bool(done.any()):  # IsaacLab-style autoreset, which the adapter must hide
            ids = done.nonzero().flatten()
            self.autoresets += int(ids.numel())
            self._reset_idx(ids, 10_000 + ids)
        return self._obs(), -dist, terminated, truncated, extras

    def close(self) -> None:
        self.closed = True


def make(num_envs: int) -> PointMassReach:
    """Factory for ``py:tests.batched_toy_env:make``."""
    return PointMassReach(num_envs)


def expert(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Head straight for the goal (from the adapter's flattened numpy obs)."""
    return np.clip(obs["policy/to_goal"] / SPEED, -1.0, 1.0)

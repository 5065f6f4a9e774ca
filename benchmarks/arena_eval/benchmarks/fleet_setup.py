"""What every ``bench fleet`` configuration shares: the workload, and how a run becomes a row.

Why one place: the three ways to evaluate (in-process, seed-style, arena-eval) must run the
same episodes of the same task against the same model, and their figures must mean the same
thing, or the ratios compare nothing. ``FleetSetup`` is the workload; ``figures`` turns any
run's counts into the row the table prints:

* ``episodes_per_h``: episodes / wall seconds x 3600; the wall clock runs from the start of
  the evaluation (every process up, its env built) to the last episode's result;
* ``per_sim_core``: ``episodes_per_h / sim_cores``, where ``sim_cores`` is the number of
  cores the sims can use: 1 for the in-process run, ``min(K, CPU cores)`` for K sim
  processes (K sims on fewer cores share them);
* ``busy_fraction``: seconds inside the model's forward pass / wall seconds (a policy
  worker's ``infer_s``; the in-process run and the seed server time their calls alike);
* ``mean_batch_rows``: rows per forward pass;
* ``sim_busy``: seconds the sims spent stepping their envs / (K x wall seconds): how much
  of each sim's time was simulation rather than waiting for actions;
* ``round_trip_ms``: mean time a sim waited for one request's answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from arena_eval.broker.errors import ConfigError

TASK = "metaworld/reach-v3"
POLICY = "arena_eval.benchmarks.policies:AffineCostPolicy"


def cpu_cores() -> int:
    """Cores this process may run on (what the sims share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class FleetSetup:
    """One task, fixed-length episodes, ``num_envs`` env slots per sim, an affine model."""

    episodes: int = 128
    ks: tuple[int, ...] = (1, 2, 4)
    task: str = TASK
    num_envs: int = 2
    max_steps: int = 50
    a_ms: float = 20.0
    b_ms: float = 0.2
    max_wait_ms: float | None = None
    action_dim: int = 4

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"K must be at least 1, got {list(self.ks)}")
        if self.episodes < max(self.ks):
            raise ConfigError(
                f"--episodes {self.episodes} is fewer than K = {max(self.ks)} sims: "
                "every sim needs an episode"
            )
        if self.num_envs < 2:
            raise ConfigError("--num-envs must be at least 2 (an overlapped sim has two lanes)")
        if self.max_steps < 1 or self.a_ms < 0 or self.b_ms < 0:
            raise ConfigError("--max-steps must be positive and --a-ms, --b-ms not negative")

    @property
    def action_shape(self) -> str:
        """One action per request (no chunking), so every env step asks the model."""
        return f"1x{self.action_dim}"

    def policy_args(self) -> dict[str, str]:
        return {"base_ms": str(self.a_ms), "row_ms": str(self.b_ms),
                "action_shape": self.action_shape}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task, "episodes": self.episodes, "ks": list(self.ks),
            "num_envs": self.num_envs, "max_steps": self.max_steps, "a_ms": self.a_ms,
            "b_ms": self.b_ms, "max_wait_ms": self.max_wait_ms, "cpu_cores": cpu_cores(),
        }  # fmt: skip


def figures(
    config: str, k: int, *, episodes: int, wall_s: float, sim_cores: int, infer_s: float,
    batches: int, rows: int, length_sum: float, sim_ms: float, requests: int,
    round_trip_ms: float,
) -> dict[str, Any]:  # fmt: skip
    """The table row of one run (see the module docstring)."""
    per_h = episodes / wall_s * 3600.0 if wall_s > 0 else 0.0
    return {
        "config": config,
        "k": k,
        "episodes": episodes,
        "wall_s": round(wall_s, 3),
        "episodes_per_h": round(per_h, 1),
        "sim_cores": sim_cores,
        "per_sim_core": round(per_h / sim_cores, 1),
        "busy_fraction": round(infer_s / wall_s, 3) if wall_s > 0 else 0.0,
        "mean_batch_rows": round(rows / batches, 2) if batches else 0.0,
        "mean_episode_length": round(length_sum / episodes, 2) if episodes else 0.0,
        "sim_busy": round(sim_ms / 1e3 / (k * wall_s), 3) if wall_s > 0 else 0.0,
        "round_trip_ms": round(round_trip_ms / requests, 3) if requests else 0.0,
    }

"""The one interface every simulator hides behind: a fixed-size batch of env slots.

Why this shape:

* **Batched, numpy only.** The rollout loop and the wire codec work on ``(N, ...)`` arrays, so
  adapters hand back stacked numpy arrays and nothing else (no torch: sim nodes may not have it).
* **Observations are always a dict** (a plain Box observation becomes ``{"state": ...}``), so
  cameras, proprioception and privileged state travel the same way.
* **No autoreset.** Episodes are scheduled by the job system: episode *i* is reset with seed
  ``SEED + i`` on whichever slot is free. So a slot only starts a new episode when ``reset`` is
  called for it, with the seed of the episode it is about to run. A finished slot stays finished
  (its flags stay set) until then; stepping it is allowed and callers ignore its row.
* **Outcome depends only on the seed.** Resetting slot ``k`` with seed ``s`` must put it in the
  state a fresh env reset with ``s`` would be in, whatever that slot ran before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from arena_eval.broker.spec import FieldSpec

ObsDict = dict[str, np.ndarray]


@dataclass
class StepResult:
    """One batched step. Every array has a leading ``num_envs`` dimension.

    ``metrics`` holds task-specific per-step numbers the env reports (for Meta-World:
    ``near_object``, ``grasp_success``, ``obj_to_target``, ``in_place_reward``, ...), as
    float64; a row whose env did not report a key this step holds NaN.
    """

    obs: ObsDict
    reward: npt.NDArray[np.float64]
    terminated: npt.NDArray[np.bool_]
    truncated: npt.NDArray[np.bool_]
    success: npt.NDArray[np.bool_]
    metrics: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    @property
    def done(self) -> npt.NDArray[np.bool_]:
        """``terminated | truncated``: the rows whose episode is over."""
        return np.logical_or(self.terminated, self.truncated)


class VectorEnv(ABC):
    """``num_envs`` env slots stepped together; see the module docstring for the contract."""

    num_envs: int

    @abstractmethod
    def observation_spec(self) -> dict[str, FieldSpec]:
        """Key -> dtype and per-row shape of every observation array ``reset``/``step`` return.

        The same :class:`~arena_eval.broker.spec.FieldSpec` a pool's spec uses, so the two
        compare directly.
        """

    @abstractmethod
    def action_dim(self) -> int:
        """Width ``A`` of the ``(N, A)`` action array ``step`` expects."""

    @abstractmethod
    def reset(self, env_ids: npt.ArrayLike, seeds: npt.ArrayLike) -> ObsDict:
        """Reset only slots ``env_ids[k]``, each with seed ``seeds[k]``.

        Returns the full ``(N, ...)`` observation dict; rows not reset keep their current obs.
        """

    @abstractmethod
    def step(self, actions: npt.ArrayLike) -> StepResult:
        """Step every slot with ``actions`` of shape ``(N, A)`` (float32 or float64)."""

    @abstractmethod
    def close(self) -> None:
        """Release simulators, subprocesses and render contexts. Idempotent."""

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_reset_args(
    env_ids: npt.ArrayLike, seeds: npt.ArrayLike, num_envs: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Validate and normalise ``reset`` arguments to two equal-length int64 vectors."""
    ids = np.asarray(env_ids, dtype=np.int64).reshape(-1)
    sds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if ids.shape != sds.shape:
        raise ValueError(f"reset: got {ids.size} env_ids but {sds.size} seeds")
    if ids.size and (ids.min() < 0 or ids.max() >= num_envs):
        raise ValueError(f"reset: env_ids must be in [0, {num_envs}), got {ids.tolist()}")
    if sds.size and sds.min() < 0:
        raise ValueError(f"reset: seeds must be non-negative, got {sds.tolist()}")
    if np.unique(ids).size != ids.size:
        raise ValueError(f"reset: env_ids contains duplicates: {ids.tolist()}")
    return ids, sds


def check_actions(actions: npt.ArrayLike, num_envs: int, action_dim: int) -> np.ndarray:
    """Return ``actions`` as an ``(N, A)`` float array, or raise a ValueError naming the shape."""
    arr = np.asarray(actions)
    if arr.shape != (num_envs, action_dim):
        raise ValueError(
            f"step: actions must have shape ({num_envs}, {action_dim}), got {arr.shape}"
        )
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr

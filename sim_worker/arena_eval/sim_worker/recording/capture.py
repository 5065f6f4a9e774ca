"""Per-slot frame buffers for the rollout: what each running episode saw and did.

Why a buffer per slot rather than writing as it goes: an episode is recorded write-once
when it ends (whether it is kept can depend on its success: ``--record failures``), so its
frames wait in memory until then. Slots whose episode cannot be recorded keep nothing.
Each frame pairs the observation a policy row was computed from with the action sent and
the reward/done/success the env returned for it, so frame count == episode length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Trajectory:
    """One ended episode's frames: obs key -> (T, ...) arrays, actions (T, A), per-step
    rewards/dones/successes (T,)."""

    index: int
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    successes: np.ndarray

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class _Frames:
    index: int
    obs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    dones: list[bool] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)


class TrajectoryBuffer:
    """Frames of the episodes running in ``num_envs`` slots; ``keep(index)`` says which
    episodes may be recorded (the others are not buffered)."""

    def __init__(self, num_envs: int, keep: Callable[[int], bool]) -> None:
        self._slots: list[_Frames | None] = [None] * num_envs
        self._keep = keep

    def begin(self, slot: int, index: int) -> None:
        self._slots[slot] = _Frames(index) if self._keep(index) else None

    def observe(self, active: np.ndarray, obs: dict[str, np.ndarray], actions: np.ndarray) -> None:
        """Before an env step: the observation each active row's action was computed from
        and that action (copied: an env may reuse its observation buffers in place)."""
        for k in np.flatnonzero(active).tolist():
            frames = self._slots[k]
            if frames is not None:
                for key, value in obs.items():
                    frames.obs.setdefault(key, []).append(np.array(value[k], copy=True))
                frames.actions.append(np.array(actions[k], np.float32, copy=True))

    def outcome(
        self, active: np.ndarray, reward: np.ndarray, done: np.ndarray, success: np.ndarray
    ) -> None:
        """After the step: what the env returned for each active row's action."""
        for k in np.flatnonzero(active).tolist():
            frames = self._slots[k]
            if frames is not None:
                frames.rewards.append(float(reward[k]))
                frames.dones.append(bool(done[k]))
                frames.successes.append(bool(success[k]))

    def finish(self, slot: int) -> Trajectory | None:
        """The slot's ended episode (None if it was not buffered); the slot is emptied."""
        frames, self._slots[slot] = self._slots[slot], None
        if frames is None or not frames.actions:
            return None
        return Trajectory(
            index=frames.index,
            obs={key: np.stack(values) for key, values in frames.obs.items()},
            actions=np.stack(frames.actions),
            rewards=np.asarray(frames.rewards, np.float32),
            dones=np.asarray(frames.dones, np.bool_),
            successes=np.asarray(frames.successes, np.bool_),
        )

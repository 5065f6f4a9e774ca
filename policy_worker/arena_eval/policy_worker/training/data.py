"""Episodes for behaviour cloning: an in-memory interface and the recorded-dataset reader.

Why an interface of its own: the trainer must not care where demonstrations
come from (a recording on disk, a test that built them in memory), so it takes
``Episode`` objects -- per-step observation arrays and the actions taken -- and
nothing else. ``chunk_targets`` turns them into (observation at t, actions
t..t+H-1) pairs, the chunked behaviour-cloning target; past an episode's end
the last action is repeated (the policy then holds still, as the demonstrator
did), as diffusion_policy and LeRobot pad their chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from arena_eval.broker.errors import ConfigError

__all__ = ["ChunkedSamples", "Episode", "check_episodes", "chunk_targets"]


@dataclass(frozen=True)
class Episode:
    """One demonstration: ``obs[key]`` is ``(T, ...)``, ``actions`` is ``(T, A)``."""

    obs: Mapping[str, np.ndarray]
    actions: np.ndarray
    task: str = ""
    success: bool | None = None
    index: int = 0
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


@dataclass(frozen=True)
class ChunkedSamples:
    """Row-aligned training pairs: ``obs[key]`` ``(N, ...)``, ``actions`` ``(N, H, A)``."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.actions.shape[0])


def check_episodes(episodes: Sequence[Episode], keys: Sequence[str]) -> None:
    """Every episode has each key, one action per step, and the same shapes throughout."""
    if not episodes:
        raise ConfigError("no episodes to train on: the dataset is empty")
    first = episodes[0]
    for ep in episodes:
        if ep.actions.ndim != 2 or ep.length < 1:
            raise ConfigError(
                f"episode {ep.index}: actions must be (T, A) with T >= 1, got {ep.actions.shape}"
            )
        if ep.actions.shape[1] != first.actions.shape[1]:
            raise ConfigError(
                f"episode {ep.index}: action dim {ep.actions.shape[1]} differs from "
                f"episode {first.index}'s {first.actions.shape[1]}"
            )
        for key in keys:
            if key not in ep.obs:
                raise ConfigError(
                    f"episode {ep.index} has no observation {key!r} (it has {sorted(ep.obs)})"
                )
            arr = ep.obs[key]
            if arr.shape[0] != ep.length:
                raise ConfigError(
                    f"episode {ep.index}: {key!r} has {arr.shape[0]} steps, actions {ep.length}"
                )
            if arr.shape[1:] != first.obs[key].shape[1:]:
                raise ConfigError(
                    f"episode {ep.index}: {key!r} rows are {arr.shape[1:]}, episode "
                    f"{first.index}'s are {first.obs[key].shape[1:]}"
                )


def chunk_targets(episodes: Sequence[Episode], keys: Sequence[str], chunk: int) -> ChunkedSamples:
    """One sample per step: its observations and the next ``chunk`` actions (padded)."""
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    check_episodes(episodes, keys)
    obs: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    acts: list[np.ndarray] = []
    for ep in episodes:
        t = ep.length
        idx = np.arange(t)[:, None] + np.arange(chunk)[None, :]  # (T, H)
        acts.append(np.asarray(ep.actions, dtype=np.float32)[np.minimum(idx, t - 1)])
        for k in keys:
            obs[k].append(np.asarray(ep.obs[k]))
    return ChunkedSamples(
        obs={k: np.concatenate(v) for k, v in obs.items()},
        actions=np.concatenate(acts),
    )

"""The contract between sim nodes and a model pool: what goes in, what comes out.

Like the seed's init handshake (observation keys, action dimension, chunk
length), but typed: every observation key carries its dtype and per-row
shape, so a sim can check its observations *before* the first request and fail
with a readable reason instead of a hang or a shape error deep in a model.
The spec is stored as JSON so ``redis-cli GET`` shows it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena_eval.broker.errors import ArenaEvalError, ConfigError


class SpecMismatch(ArenaEvalError):
    """Observations (or a joining worker) do not match the pool's spec."""


@dataclass(frozen=True)
class FieldSpec:
    """One observation key: numpy dtype name and per-row shape (without the batch dim)."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        try:
            dt = np.dtype(self.dtype)
        except TypeError as exc:
            raise ConfigError(f"bad dtype {self.dtype!r} in spec: {exc}") from None
        if dt.kind not in "biufc":
            raise ConfigError(f"dtype {self.dtype!r} is not numeric; specs carry numeric arrays")
        object.__setattr__(self, "dtype", dt.name)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class PolicySpec:
    """What a pool accepts and returns.

    ``observations=None`` means the policy accepts any observation dict (the
    ``zero`` and ``random`` policies without a spec); then only the batch
    dimension is checked.
    """

    name: str
    action_shape: tuple[int, int]  # (H, A): chunk length, action dim
    observations: Mapping[str, FieldSpec] | None = None
    version: str = "0"
    action_dtype: str = "float32"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.action_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ConfigError(
                f"action_shape must be (H, A) with H, A >= 1, got {self.action_shape!r}"
            )
        object.__setattr__(self, "action_shape", shape)

    @property
    def chunk_length(self) -> int:
        return self.action_shape[0]

    @property
    def action_dim(self) -> int:
        return self.action_shape[1]

    # -- JSON -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        obs = None
        if self.observations is not None:
            obs = {
                k: {"dtype": f.dtype, "shape": list(f.shape)}
                for k, f in sorted(self.observations.items())
            }
        return {
            "name": self.name,
            "version": self.version,
            "action_shape": list(self.action_shape),
            "action_dtype": self.action_dtype,
            "observations": obs,
            "extra": dict(self.extra),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySpec:
        try:
            raw_obs = data.get("observations")
            obs = None
            if raw_obs is not None:
                obs = {
                    str(k): FieldSpec(str(v["dtype"]), tuple(v["shape"]))
                    for k, v in raw_obs.items()
                }
            return cls(
                name=str(data["name"]),
                version=str(data.get("version", "0")),
                action_shape=tuple(data["action_shape"]),  # type: ignore[arg-type]
                action_dtype=str(data.get("action_dtype", "float32")),
                observations=obs,
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed policy spec: {exc!r}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> PolicySpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"policy spec is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("policy spec JSON must be an object")
        return cls.from_dict(data)

    # -- checks ---------------------------------------------------------------
    def incompatibility(self, other: PolicySpec) -> str | None:
        """Why ``other`` cannot serve the same pool as ``self`` (None if it can).

        Workers of one pool must be interchangeable: same observations, same
        action shape and dtype. Name and version may differ (e.g. a rollout).
        """
        if self.action_shape != other.action_shape:
            return f"action_shape {list(other.action_shape)} != pool's {list(self.action_shape)}"
        if self.action_dtype != other.action_dtype:
            return f"action_dtype {other.action_dtype} != pool's {self.action_dtype}"
        mine = None if self.observations is None else dict(self.observations)
        theirs = None if other.observations is None else dict(other.observations)
        if mine != theirs:
            return f"observations {_describe(theirs)} != pool's {_describe(mine)}"
        return None

    def check_observations(self, obs: Mapping[str, Any], rows: int | None = None) -> int:
        """Check a batch against the spec; return its row count or raise SpecMismatch."""
        if not isinstance(obs, Mapping) or not obs:
            raise SpecMismatch("observations must be a non-empty dict of numpy arrays")
        batch: int | None = rows
        for key, value in obs.items():
            if not isinstance(value, np.ndarray):
                raise SpecMismatch(
                    f"observation {key!r} is a {type(value).__name__}, expected a numpy array"
                )
            if value.ndim < 1:
                raise SpecMismatch(f"observation {key!r} has no batch dimension (shape ())")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise SpecMismatch(
                    f"observation {key!r} has {value.shape[0]} rows, expected {batch}"
                )
        if self.observations is not None:
            expected = set(self.observations)
            missing = sorted(expected - set(obs))
            unexpected = sorted(set(obs) - expected)
            if missing or unexpected:
                raise SpecMismatch(
                    f"observation keys differ from pool {self.name!r}: missing {missing}, "
                    f"unexpected {unexpected}; expected {_describe(dict(self.observations))}"
                )
            for key, fs in self.observations.items():
                value = obs[key]
                if value.dtype.name != fs.dtype or tuple(value.shape[1:]) != fs.shape:
                    raise SpecMismatch(
                        f"observation {key!r}: expected {fs.describe()} per row, got "
                        f"{value.dtype.name}{list(value.shape[1:])} (pool {self.name!r})"
                    )
        assert batch is not None
        return int(batch)


def _describe(obs: Mapping[str, FieldSpec] | None) -> str:
    if obs is None:
        return "<any>"
    return "{" + ", ".join(f"{k}: {f.describe()}" for k, f in sorted(obs.items())) + "}"

"""The contract between sim nodes and a model pool: what goes in, what comes out.

Like the seed's init handshake (observation keys, action dimension, chunk
length), but typed: every observation key carries its dtype and per-row
shape, so a sim can check its observations *before* the first request and fail
with a readable reason instead of a hang or a shape error deep in a model.
The spec is stored as JSON so ``redis-cli GET`` shows it as it is.

Shapes alone do not make workers interchangeable: a door-close expert has the
door-open expert's shapes. So a spec also carries the policy's *identity*
(its class, name, version and the arguments that shape its answers, with a
digest of them) and, where the policy knows them, the *tasks* it serves; a
worker with another identity is refused by a live pool, and a job for a task
the pool does not declare fails with that reason. Specs written before these
fields existed still load (both are then unknown and not checked).

A language-conditioned policy says so (``needs_instruction``): a sim with no
instruction for such a pool is refused before it sends anything
(``MissingInstruction``), since a VLA fed an empty prompt does not fail -- it
quietly does something else, and the job would report a wrong success rate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena_eval.broker.errors import ArenaEvalError, ConfigError


class SpecMismatch(ArenaEvalError):
    """Observations (or a joining worker) do not match the pool's spec."""


class MissingInstruction(SpecMismatch):
    """Rows without a language instruction for a pool whose spec has ``needs_instruction``."""


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
class PolicyIdentity:
    """Which model answers: its class, name, version and the arguments that shape its answers.

    ``params`` are text (``--policy-arg`` values, a checkpoint's sha256, ...)
    so the JSON in Redis stays readable; runtime-only arguments (device,
    threads) are left out by the policy, so workers on different devices can
    share a pool. Two identities are the same model iff their digests match.
    """

    kind: str  # "module:Class"
    name: str
    version: str = "0"
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", {str(k): str(v) for k, v in self.params.items()})

    @property
    def digest(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of all four fields."""
        canonical = json.dumps(
            [self.kind, self.name, self.version, sorted(self.params.items())], sort_keys=True
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def describe(self) -> str:
        params = " ".join(f"{k}={_clip(v)}" for k, v in sorted(self.params.items()))
        return f"{self.name} v{self.version} [{self.kind}{' ' + params if params else ''}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "params": dict(sorted(self.params.items())),
            "digest": self.digest,  # for readers; recomputed, never trusted, on load
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyIdentity:
        return cls(
            kind=str(data["kind"]),
            name=str(data.get("name", "")),
            version=str(data.get("version", "0")),
            params=dict(data.get("params") or {}),
        )


@dataclass(frozen=True)
class PolicySpec:
    """What a pool accepts and returns.

    ``observations=None`` means the policy accepts any observation dict (the
    ``zero`` and ``random`` policies without a spec); then only the batch
    dimension is checked.

    ``policy`` is the serving policy's identity (set by the worker; ``None``
    in specs from before identities). ``tasks``, when the policy declares
    them, lists the tasks it can drive (``"metaworld/door-open-v3"`` or a
    bare ``"door-open-v3"``); ``None`` means any task. ``needs_instruction``:
    every row must carry a non-empty language instruction.
    """

    name: str
    action_shape: tuple[int, int]  # (H, A): chunk length, action dim
    observations: Mapping[str, FieldSpec] | None = None
    version: str = "0"
    action_dtype: str = "float32"
    extra: Mapping[str, Any] = field(default_factory=dict)
    policy: PolicyIdentity | None = None
    tasks: tuple[str, ...] | None = None
    needs_instruction: bool = False

    def __post_init__(self) -> None:
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
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
            "policy": None if self.policy is None else self.policy.to_dict(),
            "tasks": None if self.tasks is None else list(self.tasks),
            "needs_instruction": self.needs_instruction,
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
            raw_policy = data.get("policy")
            raw_tasks = data.get("tasks")
            if raw_tasks is not None and not isinstance(raw_tasks, list):
                raise TypeError(f"tasks must be a list, got {type(raw_tasks).__name__}")
            needs_instruction = data.get("needs_instruction", False)
            if not isinstance(needs_instruction, bool):
                raise TypeError(f"needs_instruction must be a bool, got {needs_instruction!r}")
            return cls(
                name=str(data["name"]),
                version=str(data.get("version", "0")),
                action_shape=tuple(data["action_shape"]),  # type: ignore[arg-type]
                action_dtype=str(data.get("action_dtype", "float32")),
                observations=obs,
                extra=dict(data.get("extra") or {}),
                policy=None if raw_policy is None else PolicyIdentity.from_dict(raw_policy),
                tasks=None if raw_tasks is None else tuple(str(t) for t in raw_tasks),
                needs_instruction=needs_instruction,
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
        action shape and dtype, and the same policy identity (class, name,
        version, arguments) when both specs carry one. To roll out a new
        model, serve it under another pool name or stop the old workers first.
        """
        if self.action_shape != other.action_shape:
            return f"action_shape {list(other.action_shape)} != pool's {list(self.action_shape)}"
        if self.action_dtype != other.action_dtype:
            return f"action_dtype {other.action_dtype} != pool's {self.action_dtype}"
        mine = None if self.observations is None else dict(self.observations)
        theirs = None if other.observations is None else dict(other.observations)
        if mine != theirs:
            return f"observations {_describe(theirs)} != pool's {_describe(mine)}"
        if (
            self.policy is not None
            and other.policy is not None
            and self.policy.digest != other.policy.digest
        ):
            return (
                f"policy {other.policy.describe()} (digest {other.policy.digest}) is not the "
                f"pool's policy {self.policy.describe()} (digest {self.policy.digest})"
            )
        if self.tasks != other.tasks:
            return f"tasks {_tasks(other.tasks)} != pool's {_tasks(self.tasks)}"
        if self.needs_instruction != other.needs_instruction:
            return f"needs_instruction={other.needs_instruction} != pool's {self.needs_instruction}"
        return None

    def check_instructions(self, instructions: list[str]) -> None:
        """Raise ``MissingInstruction`` if this pool needs instructions and a row has none."""
        if self.needs_instruction and (not instructions or "" in instructions):
            missing = instructions.count("") if instructions else "all"
            raise MissingInstruction(
                f"pool policy {self.name!r} is language-conditioned (needs_instruction) but "
                f"{missing} row(s) carry no instruction; give the job an instruction for "
                "its task (a suite's task table, or the task's --instruction)"
            )

    def serves_task(self, task: str) -> bool:
        """Whether ``task`` (a job's task string) is one this policy declares (any if none).

        A declared task with a family prefix (``metaworld/door-open-v3``)
        must match the job's task whole; a bare one (``door-open-v3``,
        ``CartPole-v1``) matches the job's task after its last ``/``, so
        ``gym/CartPole-v1`` and ``CartPole-v1`` name the same task. Case is
        ignored.
        """
        if self.tasks is None:
            return True
        job = task.strip().lower()
        job_bare = job.rsplit("/", 1)[-1]
        for declared in self.tasks:
            want = declared.strip().lower()
            if want == job or ("/" not in want and want == job_bare):
                return True
            if "/" not in job and want.rsplit("/", 1)[-1] == job:
                return True
        return False

    def describe_tasks(self) -> str:
        return _tasks(self.tasks)

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


def _tasks(tasks: tuple[str, ...] | None) -> str:
    return "<any>" if tasks is None else "[" + ", ".join(tasks) + "]"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(obs: Mapping[str, FieldSpec] | None) -> str:
    if obs is None:
        return "<any>"
    return "{" + ", ".join(f"{k}: {f.describe()}" for k, f in sorted(obs.items())) + "}"

"""Adapter for batched torch environments in the IsaacLab style.

Such envs already simulate ``num_envs`` worlds in one tensor program, so there is nothing to
vectorise: the adapter converts tensors to numpy once per *key* (``detach().cpu().numpy()``,
never a loop over envs), flattens nested observation groups, and enforces the
:class:`~.base.VectorEnv` contract the wrapped env may not follow (IsaacLab autoresets).

The wrapped env must provide (duck-typed, see :class:`TensorEnv`):

* ``num_envs: int`` and ``action_dim: int`` (or an ``action_space`` /
  ``single_action_space`` whose last shape entry is the action width);
* ``reset(env_ids=<int64 tensor on env.device>, seeds=<int64 CPU tensor>)`` resetting only those
  envs, env ``env_ids[k]`` with seed ``seeds[k]`` (e.g. by seeding a per-env
  ``torch.Generator``); it returns ``obs`` or ``(obs, extras)``, with ``obs`` for all envs;
* ``step(actions)`` taking an ``(N, A)`` float32 tensor on ``env.device`` and returning
  ``(obs, reward, terminated, truncated, extras)``, all per-env tensors;
* optionally ``device`` (default ``"cpu"``) and ``close()``.

``obs`` is a mapping of tensors, possibly nested like IsaacLab's ``{"policy": {...}}``; nested
keys are joined with ``/`` (``{"policy": {"joint_pos": t}}`` -> ``"policy/joint_pos"``). A plain
tensor observation becomes ``{"state": ...}``.
``extras["success"]`` (per-env, optional) becomes ``StepResult.success``; the other per-env
numeric ``(N,)`` tensors at the top level of ``extras`` become ``metrics`` (so IsaacLab's
``extras["log"]`` of scalars is skipped). bfloat16 tensors are widened to float32.

Contract enforcement, all vectorised: a slot that finished keeps its final observation and flags
(reward 0) until ``reset`` is called for it, even if the env autoresets it internally; the
adapter counts steps and truncates at ``max_steps``.

Terminal observations: an env that autoresets inside ``step`` (IsaacLab does) returns the *new*
episode's first observation for the envs that just finished. If it also puts the terminal
observations in ``extras["final_obs"]`` (same structure as ``obs``, all envs), the adapter uses
those rows for the finished envs; otherwise the finished row holds the post-reset observation
(callers ignore finished rows for acting, but a recorded final frame would be wrong).

Construction resets slot ``i`` with seed ``seed + i``. torch is imported lazily: sim nodes
without torch can import this package.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec
from arena_eval.sim_worker.envs.adapter import EnvAdapter, EnvOptions
from arena_eval.sim_worker.envs.base import (
    ObsDict,
    StepResult,
    VectorEnv,
    check_actions,
    check_reset_args,
)
from arena_eval.sim_worker.envs.errors import require, unknown_task

SEP = "/"
PREFIX = "py:"


class TensorEnv(Protocol):
    """The duck type :class:`TensorEnvAdapter` wraps; see the module docstring."""

    num_envs: int

    def reset(self, *, env_ids: Any, seeds: Any) -> Any: ...

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, Any]: ...


class TensorEnvAdapter(VectorEnv):
    """:class:`VectorEnv` over a batched torch env; see the module docstring."""

    def __init__(self, env: TensorEnv, *, seed: int = 0, max_steps: int | None = None) -> None:
        self._torch: Any = require("torch", purpose="batched tensor environments")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        self._env = env
        self.num_envs = int(env.num_envs)
        self._device = getattr(env, "device", "cpu")
        self._action_dim = _action_dim(env)
        self._max_steps = max_steps
        n = self.num_envs
        self._steps = np.zeros(n, dtype=np.int64)
        self._terminated = np.zeros(n, dtype=np.bool_)
        self._truncated = np.zeros(n, dtype=np.bool_)
        self._success = np.zeros(n, dtype=np.bool_)
        self._obs: ObsDict = {}
        self._spec: dict[str, FieldSpec] = {}
        self._closed = False
        self.reset(np.arange(n), seed + np.arange(n))

    def observation_spec(self) -> dict[str, FieldSpec]:
        return dict(self._spec)

    def action_dim(self) -> int:
        return self._action_dim

    def reset(self, env_ids: npt.ArrayLike, seeds: npt.ArrayLike) -> ObsDict:
        ids, sds = check_reset_args(env_ids, seeds, self.num_envs)
        if ids.size:
            torch = self._torch
            out = self._env.reset(
                env_ids=torch.as_tensor(ids, dtype=torch.int64, device=self._device),
                seeds=torch.as_tensor(sds, dtype=torch.int64),
            )
            obs = self._to_numpy_obs(out[0] if isinstance(out, tuple) else out)
            if not self._obs:  # first reset (construction): every row is fresh
                self._obs = {k: np.array(v) for k, v in obs.items()}
                self._spec = {k: FieldSpec(v.dtype.name, v.shape[1:]) for k, v in obs.items()}
            else:
                for key, buf in self._obs.items():
                    buf[ids] = obs[key][ids]
            for flags in (self._terminated, self._truncated, self._success):
                flags[ids] = False
            self._steps[ids] = 0
        return {k: v.copy() for k, v in self._obs.items()}

    def step(self, actions: npt.ArrayLike) -> StepResult:
        torch = self._torch
        acts = check_actions(actions, self.num_envs, self._action_dim)
        act_t = torch.as_tensor(acts, dtype=torch.float32, device=self._device)
        obs_t, reward_t, term_t, trunc_t, extras = self._env.step(act_t)
        n = self.num_envs
        frozen = self._terminated | self._truncated
        live = ~frozen
        obs = self._to_numpy_obs(obs_t)
        extras = extras if isinstance(extras, Mapping) else {}
        for key, buf in self._obs.items():
            np.copyto(buf, obs[key], where=_rows(live, buf.ndim))
        reward = _vec(reward_t, n).astype(np.float64)
        reward[frozen] = 0.0
        self._steps[live] += 1
        truncated = _vec(trunc_t, n).astype(np.bool_)
        if self._max_steps is not None:
            truncated |= self._steps >= self._max_steps
        success_t = extras.get("success")
        success = (
            _vec(success_t, n).astype(np.bool_)
            if success_t is not None
            else np.zeros(n, dtype=np.bool_)
        )
        self._terminated = np.where(frozen, self._terminated, _vec(term_t, n).astype(np.bool_))
        self._truncated = np.where(frozen, self._truncated, truncated)
        self._success = np.where(frozen, self._success, success)
        final_t = extras.get("final_obs")
        if final_t is not None:
            ended = live & (self._terminated | self._truncated)
            if ended.any():
                final = self._to_numpy_obs(final_t)
                for key, buf in self._obs.items():
                    np.copyto(buf, final[key], where=_rows(ended, buf.ndim))
        metrics: dict[str, npt.NDArray[np.float64]] = {}
        for key, value in extras.items():
            if key in ("success", "final_obs") or isinstance(value, Mapping):
                continue
            arr = _to_numpy(value)
            if arr.shape == (n,) and arr.dtype.kind in "biuf":
                metrics[key] = arr.astype(np.float64)
        return StepResult(
            obs={k: v.copy() for k, v in self._obs.items()},
            reward=reward,
            terminated=self._terminated.copy(),
            truncated=self._truncated.copy(),
            success=self._success.copy(),
            metrics=metrics,
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._env, "close", None)
            if callable(close):
                close()

    def _to_numpy_obs(self, obs: Any) -> ObsDict:
        if not isinstance(obs, Mapping):
            obs = {"state": obs}
        flat = flatten_tensors(obs)
        if self._obs and flat.keys() != self._obs.keys():
            raise ValueError(f"observation keys changed from {sorted(self._obs)} to {sorted(flat)}")
        return flat


def flatten_tensors(obs: Mapping[str, Any], prefix: str = "") -> ObsDict:
    """Nested mapping of tensors -> flat ``{"a/b": ndarray}`` (one conversion per key)."""
    out: ObsDict = {}
    for key, value in obs.items():
        if isinstance(value, Mapping):
            out.update(flatten_tensors(value, f"{prefix}{key}{SEP}"))
        else:
            out[f"{prefix}{key}"] = _to_numpy(value)
    return out


def _to_numpy(value: Any) -> np.ndarray:
    detach = getattr(value, "detach", None)
    if detach is None:
        return np.asarray(value)
    tensor = detach()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()
    return np.asarray(tensor.cpu().numpy())


def _rows(mask: npt.NDArray[np.bool_], ndim: int) -> npt.NDArray[np.bool_]:
    """A per-row mask shaped to broadcast over an ``ndim``-dimensional batch array."""
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def _vec(value: Any, n: int) -> np.ndarray:
    arr = _to_numpy(value)
    if arr.size != n:
        raise ValueError(f"expected one value per env ({n}), got shape {arr.shape}")
    return arr.reshape(n)


def _action_dim(env: Any) -> int:
    dim = getattr(env, "action_dim", None)
    if dim is not None:
        return int(dim)
    for attr in ("single_action_space", "action_space"):
        space = getattr(env, attr, None)
        shape = getattr(space, "shape", None)
        if shape:
            return int(shape[-1])
    raise ConfigError(
        f"{type(env).__name__} exposes neither action_dim nor an action_space with a shape; "
        "add `action_dim: int` to the env"
    )


def _make(name: str, num_envs: int, options: EnvOptions) -> TensorEnvAdapter:
    """The task table's factory for ``py:<module.path>:<factory>`` (``name``: after ``py:``).

    The env is already batched, so ``vectorization`` does not apply, and cameras are the
    factory's business.
    """
    if options.camera is not None:
        raise ConfigError(
            f"camera={options.camera!r} is not supported for {PREFIX} tasks: configure cameras "
            "in the factory itself"
        )
    env = _call_factory(name, num_envs)
    return TensorEnvAdapter(env, seed=options.seed, max_steps=options.max_steps)


def _call_factory(name: str, num_envs: int) -> Any:
    task = PREFIX + name
    module_name, _, attr = name.rpartition(":")
    if not module_name or not attr:
        raise unknown_task(task, f"expected '{PREFIX}<module.path>:<factory>'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise unknown_task(task, f"cannot import module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise unknown_task(task, f"module {module_name!r} has no callable {attr!r}")
    return factory(num_envs)


ADAPTER = EnvAdapter(
    prefix=PREFIX,
    make=_make,
    syntax=(
        f"'{PREFIX}<module.path>:<factory>' (a callable that takes num_envs and returns a "
        "batched torch env, see arena_eval.sim_worker.envs.tensor_env)"
    ),
)

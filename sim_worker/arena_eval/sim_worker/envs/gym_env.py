"""Adapter from a gymnasium vector env (sync or async) to :class:`VectorEnv`.

Any single-env gymnasium factory works: each env is wrapped in
:class:`~.gym_episode.EpisodeGuard` (step limit, success, done latch), vectorised by
gymnasium's ``SyncVectorEnv`` (one process) or ``AsyncVectorEnv`` (one subprocess per env,
shared-memory observations) with ``AutoresetMode.DISABLED``, and partially reset through
``options={"reset_mask": ...}`` with one seed per reset env. Gymnasium's own batching does
the stacking, so per-step work here is a handful of numpy operations per *key*, not per env.

Conventions (documented because they are choices):

* ``success`` is ``info["success"] > 0`` when the env reports it, else False;
* Box observations become ``{"state": ...}``; Dict spaces are flattened with ``/``
  (``{"a": {"b": x}}`` -> ``"a/b"``); Discrete/MultiDiscrete become int64, MultiBinary int8;
* Box actions are reshaped to the action space's shape and cast to its dtype; a Discrete
  action space has ``action_dim() == 1`` and takes ``rint(actions[:, 0])`` (MultiDiscrete:
  one column per component);
* ``metrics`` are the numeric per-env info keys gymnasium batched (not ``success``, not our
  own ``arena.*`` flags), NaN where an env did not report the key.

gymnasium is imported lazily so that importing the package does not require it.
"""

from __future__ import annotations

import enum
import importlib
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

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
from arena_eval.sim_worker.envs.gym_flags import SUCCESS, TERMINATED, TRUNCATED

if TYPE_CHECKING:
    import gymnasium as gym

SEP = "/"
PREFIX = "gym/"


class Vectorization(str, enum.Enum):
    """How a worker steps its env slots: in its own process, or one subprocess per slot."""

    SYNC = "sync"
    ASYNC = "async"


VECTORIZATIONS = tuple(v.value for v in Vectorization)

_NOT_METRICS = frozenset({TERMINATED, TRUNCATED, SUCCESS, "success"})


def default_async_context() -> str | None:
    """``forkserver`` where available: forking a worker that already runs threads (Redis
    clients, torch) can deadlock the children; ``None`` means the platform default."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None


class GymVectorEnv(VectorEnv):
    """:class:`VectorEnv` over ``num_envs`` gymnasium envs built by ``env_fns``.

    ``env_fns`` build *bare* envs; this class adds the :class:`EpisodeGuard`. For
    ``vectorization="async"`` they must be picklable (module-level functions or partials).
    Construction resets slot ``i`` with seed ``seed + i`` so every row is valid before the
    caller resets the slots it schedules.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env[Any, Any]]],
        *,
        vectorization: str = "sync",
        seed: int = 0,
        max_steps: int | None = None,
        terminate_on_success: bool = False,
        context: str | None = None,
    ) -> None:
        require("gymnasium", purpose="gymnasium environments")
        from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

        if vectorization not in VECTORIZATIONS:
            raise ConfigError(
                f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}"
            )
        if not env_fns:
            raise ConfigError("num_envs must be >= 1")
        guarded = [
            partial(_guarded, fn, max_steps=max_steps, terminate_on_success=terminate_on_success)
            for fn in env_fns
        ]
        self.num_envs = len(guarded)
        self._vec: Any  # Sync or Async; their stubs disagree on reset's seed type
        if vectorization == "sync":
            self._vec = SyncVectorEnv(guarded, autoreset_mode=AutoresetMode.DISABLED)
        else:
            self._vec = AsyncVectorEnv(
                guarded,
                autoreset_mode=AutoresetMode.DISABLED,
                context=context if context is not None else default_async_context(),
            )
        self._closed = False
        try:
            self._spec = spec_from_space(self._vec.single_observation_space)
            self._to_env_action = action_converter(self._vec.single_action_space, self.num_envs)
            self._action_dim = action_dim_of(self._vec.single_action_space)
            self._obs: ObsDict = {}
            self.reset(np.arange(self.num_envs), seed + np.arange(self.num_envs))
        except BaseException:
            self.close()
            raise

    def observation_spec(self) -> dict[str, FieldSpec]:
        return dict(self._spec)

    def action_dim(self) -> int:
        return self._action_dim

    def reset(self, env_ids: npt.ArrayLike, seeds: npt.ArrayLike) -> ObsDict:
        ids, sds = check_reset_args(env_ids, seeds, self.num_envs)
        if ids.size == 0:
            return {k: v.copy() for k, v in self._obs.items()}
        mask = np.zeros(self.num_envs, dtype=np.bool_)
        mask[ids] = True
        seed_list: list[int | None] = [None] * self.num_envs
        for i, s in zip(ids.tolist(), sds.tolist(), strict=True):
            seed_list[i] = int(s)
        obs, _ = self._vec.reset(seed=seed_list, options={"reset_mask": mask})
        self._obs = flatten_obs(obs)  # gymnasium already hands out copies (copy=True)
        return dict(self._obs)

    def step(self, actions: npt.ArrayLike) -> StepResult:
        acts = check_actions(actions, self.num_envs, self._action_dim)
        obs, reward, _, _, infos = self._vec.step(self._to_env_action(acts))
        self._obs = flatten_obs(obs)
        n = self.num_envs
        return StepResult(
            obs=dict(self._obs),
            reward=np.asarray(reward, dtype=np.float64).reshape(n),
            terminated=_flag(infos, TERMINATED, n),
            truncated=_flag(infos, TRUNCATED, n),
            success=_flag(infos, SUCCESS, n),
            metrics=numeric_infos(infos, n, skip=_NOT_METRICS),
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._vec.close()


def _guarded(
    fn: Callable[[], gym.Env[Any, Any]], *, max_steps: int | None, terminate_on_success: bool
) -> gym.Env[Any, Any]:
    from arena_eval.sim_worker.envs.gym_episode import EpisodeGuard

    return EpisodeGuard(fn(), max_steps=max_steps, terminate_on_success=terminate_on_success)


def make_gym_env(
    env_id: str,
    num_envs: int,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    vectorization: str = "sync",
    **make_kwargs: Any,
) -> GymVectorEnv:
    """Vectorise ``gymnasium.make(env_id, **make_kwargs)``; unknown ids raise UnknownTask."""
    gym_mod = require("gymnasium", purpose=f"gymnasium env {env_id!r}")
    from gymnasium.error import Error as GymError

    try:
        gym_mod.spec(env_id)  # resolves "module:EnvId" too; cheap, and a clear error early
    except GymError as exc:
        raise unknown_task(f"gym/{env_id}", str(exc)) from exc
    fns = [partial(gym_mod.make, env_id, **make_kwargs) for _ in range(num_envs)]
    return GymVectorEnv(fns, vectorization=vectorization, seed=seed, max_steps=max_steps)


def _make(name: str, num_envs: int, options: EnvOptions) -> GymVectorEnv:
    """The task table's factory: ``gym/<EnvId>`` (``name`` is the id) or a bare id."""
    if options.camera is not None:
        raise ConfigError(
            f"camera={options.camera!r} is only supported for metaworld/ tasks, not "
            f"gymnasium env {name!r}"
        )
    if not name:
        raise unknown_task(PREFIX, f"no gymnasium id after {PREFIX!r}")
    return make_gym_env(
        name,
        num_envs,
        seed=options.seed,
        max_steps=options.max_steps,
        vectorization=options.vectorization,
    )


def is_gym_id(task: str) -> bool:
    """A bare id is gymnasium's if gymnasium has it registered."""
    try:
        gym: Any = importlib.import_module("gymnasium")
    except ModuleNotFoundError as exc:
        raise unknown_task(
            task,
            "(gymnasium is not installed, so bare gymnasium ids cannot be resolved: "
            "pip install 'arena-eval[sim]')",
        ) from exc
    return task in gym.envs.registry


ADAPTER = EnvAdapter(
    prefix=PREFIX,
    make=_make,
    syntax=f"'{PREFIX}<EnvId>' or a bare registered gymnasium id (e.g. CartPole-v1)",
    claims_bare=is_gym_id,
)


def _flag(infos: Mapping[str, Any], key: str, n: int) -> npt.NDArray[np.bool_]:
    value = infos.get(key)
    if value is None:
        return np.zeros(n, dtype=np.bool_)
    return np.asarray(value, dtype=np.bool_).reshape(n)


def numeric_infos(
    infos: Mapping[str, Any], n: int, *, skip: frozenset[str] | set[str]
) -> dict[str, npt.NDArray[np.float64]]:
    """Batched numeric ``(N,)`` info arrays as float64, NaN where the env lacked the key."""
    out: dict[str, npt.NDArray[np.float64]] = {}
    for key, value in infos.items():
        if key.startswith("_") or key in skip:
            continue
        if (
            not isinstance(value, np.ndarray)
            or value.shape != (n,)
            or value.dtype.kind not in "biuf"
        ):
            continue
        metric = value.astype(np.float64)
        mask = infos.get(f"_{key}")
        if isinstance(mask, np.ndarray) and not mask.all():
            metric[~mask] = np.nan
        out[key] = metric
    return out


def flatten_obs(obs: Any, prefix: str = "") -> ObsDict:
    """Batched gymnasium observation -> flat ``{key: (N, ...) array}`` (see module doc)."""
    if isinstance(obs, Mapping):
        out: ObsDict = {}
        for key, value in obs.items():
            out.update(flatten_obs(value, f"{prefix}{key}{SEP}"))
        return out
    return {prefix[: -len(SEP)] if prefix else "state": np.asarray(obs)}


def spec_from_space(space: Any, prefix: str = "") -> dict[str, FieldSpec]:
    """Per-row :class:`FieldSpec` for every key :func:`flatten_obs` produces from ``space``."""
    from gymnasium import spaces

    key = prefix[: -len(SEP)] if prefix else "state"
    if isinstance(space, spaces.Dict):
        out: dict[str, FieldSpec] = {}
        for name, sub in space.spaces.items():
            out.update(spec_from_space(sub, f"{prefix}{name}{SEP}"))
        return out
    if isinstance(space, spaces.Box):
        return {key: FieldSpec(np.dtype(space.dtype).name, tuple(space.shape))}
    if isinstance(space, spaces.Discrete):
        return {key: FieldSpec("int64", ())}
    if isinstance(space, spaces.MultiDiscrete):
        return {key: FieldSpec("int64", tuple(space.shape))}
    if isinstance(space, spaces.MultiBinary):
        return {key: FieldSpec("int8", tuple(space.shape))}
    raise ConfigError(
        f"unsupported observation space {space!r} at {key!r}: arena-eval supports Box, "
        "Discrete, MultiDiscrete, MultiBinary and (nested) Dict of those"
    )


def action_dim_of(space: Any) -> int:
    """Width of the flat action row for ``space``."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box | spaces.MultiDiscrete):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return 1
    raise ConfigError(
        f"unsupported action space {space!r}: arena-eval supports Box, Discrete, MultiDiscrete"
    )


def action_converter(space: Any, n: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from ``(N, A)`` float actions to what the batched action space expects."""
    from gymnasium import spaces

    action_dim_of(space)  # validates the space
    if isinstance(space, spaces.Box):
        shape, dtype = (n, *space.shape), space.dtype

        def box(actions: np.ndarray) -> np.ndarray:
            return np.asarray(actions.reshape(shape), dtype=dtype)

        return box
    if isinstance(space, spaces.Discrete):

        def discrete(actions: np.ndarray) -> np.ndarray:
            return np.asarray(np.rint(actions[:, 0]), dtype=np.int64)

        return discrete
    md_shape = (n, *space.shape)

    def multi_discrete(actions: np.ndarray) -> np.ndarray:
        return np.asarray(np.rint(actions), dtype=np.int64).reshape(md_shape)

    return multi_discrete

"""Model-free policies: ``zero`` and ``random``.

They exist to measure and test the fabric itself. ``zero`` is the latency
benchmark policy -- its ``infer`` costs one ``np.zeros`` (calloc-backed, so
even large chunks are cheap), leaving only transport and batching in the
numbers. ``random`` produces non-trivial, reproducible actions for
end-to-end tests of the action path (scattering rows back to the right sims).

Both accept *any* observation dict unless an ``obs`` spec is given, because a
benchmark should run against whatever a sim sends; with ``obs`` they declare a
real spec, so sims are checked against it like against a real model.
"""

from __future__ import annotations

import numpy as np

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.builtins.args import (
    ObsArg,
    ShapeArg,
    parse_action_shape,
    parse_dtype,
    parse_float,
    parse_int,
    parse_obs_spec,
)
from arena_eval.policy_worker.policy import ArgDoc, Batch, Policy

__all__ = ["RandomPolicy", "ZeroPolicy"]

DEFAULT_ACTION_SHAPE = "16x36"  # GR1: a 16-step chunk of 36 DoF


class ZeroPolicy(Policy):
    """Returns all-zero action chunks of shape ``(B, H, A)``.

    Arguments (strings from ``--policy-arg``, or typed values from Python):

    * ``action_shape``: ``'HxA'``, default ``'16x36'``.
    * ``action_dtype``: numpy dtype name, default ``'float32'``.
    * ``obs``: optional observation spec ``'key:dtype:d1xd2,...'``, e.g.
      ``'robot_pov_cam_rgb:uint8:512x512x3,joint_pos:float32:54'``. Without it
      the spec's ``observations`` is ``None``: the policy accepts ANY
      observation dict and only the batch dimension is checked.

    ``B`` is the leading dimension of the first observation array.
    """

    ARGS = {
        "action_shape": ArgDoc("HxA shape", "Chunk length x action dim, e.g. 16x36."),
        "obs": ArgDoc(
            "key:dtype:shape,...",
            "Observation spec sims are checked against, e.g. state:float32:39; "
            "empty: accept any observation dict.",
        ),
        "action_dtype": ArgDoc("numpy dtype", "dtype of the actions, e.g. float32."),
    }

    def __init__(
        self,
        action_shape: ShapeArg = DEFAULT_ACTION_SHAPE,
        obs: ObsArg = None,
        action_dtype: str = "float32",
    ) -> None:
        self._spec = PolicySpec(
            name=self._policy_name(),
            action_shape=parse_action_shape(action_shape),
            observations=parse_obs_spec(obs),
            action_dtype=parse_dtype(action_dtype),
        )
        self._tail = self._spec.action_shape
        self._dtype = np.dtype(self._spec.action_dtype)

    @classmethod
    def _policy_name(cls) -> str:
        return "zero"

    def spec(self) -> PolicySpec:
        return self._spec

    def identity_params(self) -> dict[str, str]:
        return {}  # shapes and dtypes are in the spec itself

    def infer(self, batch: Batch) -> np.ndarray:
        return np.zeros((batch.rows, *self._tail), dtype=self._dtype)


class RandomPolicy(ZeroPolicy):
    """Uniform random action chunks in ``[low, high]``, from a seeded generator.

    Same arguments as ``zero`` plus ``seed`` (default 0), ``low`` (default -1)
    and ``high`` (default 1). The stream of actions is reproducible for a given
    seed and sequence of batch sizes; which sim gets which row depends on
    batching, so per-episode reproducibility is not promised.
    """

    ARGS = {
        **ZeroPolicy.ARGS,
        "seed": ArgDoc("int >= 0", "Seed of the action generator."),
        "low": ArgDoc("float", "Smallest action value."),
        "high": ArgDoc("float", "Largest action value (>= low)."),
    }

    def __init__(
        self,
        action_shape: ShapeArg = DEFAULT_ACTION_SHAPE,
        obs: ObsArg = None,
        action_dtype: str = "float32",
        seed: str | int = 0,
        low: str | float = -1.0,
        high: str | float = 1.0,
    ) -> None:
        super().__init__(action_shape=action_shape, obs=obs, action_dtype=action_dtype)
        self._seed = parse_int(seed, "seed", minimum=0)
        self._low = parse_float(low, "low")
        self._high = parse_float(high, "high")
        if self._low > self._high:
            raise ConfigError(f"low ({self._low}) must be <= high ({self._high})")
        self._rng = np.random.default_rng(self._seed)

    @classmethod
    def _policy_name(cls) -> str:
        return "random"

    def identity_params(self) -> dict[str, str]:
        return {"seed": str(self._seed), "low": repr(self._low), "high": repr(self._high)}

    def infer(self, batch: Batch) -> np.ndarray:
        shape = (batch.rows, *self._tail)
        if self._dtype in (np.float32, np.float64):
            out = self._rng.random(shape, dtype=self._dtype)
            out *= self._high - self._low
            out += self._low
            # float rounding of low + u * (high - low) may overshoot high by one ulp
            np.minimum(out, self._high, out=out)
            return out
        return self._rng.uniform(self._low, self._high, shape).astype(self._dtype)

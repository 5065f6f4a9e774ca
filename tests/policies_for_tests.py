"""Small real policies for the pool tests, loadable as ``tests.policies_for_tests:Name``.

``EchoPolicy`` makes every answer a checkable function of its own row, so a
test can prove each client got *its* rows back, in order. ``stall`` and
``fail`` markers let a test make one request hang (to kill its worker) or
make ``infer`` raise.
"""

from __future__ import annotations

import time

import numpy as np

from arena_eval.broker.spec import FieldSpec, PolicySpec
from arena_eval.policy_worker.policy import Batch, Policy

STALL_MARKER = 999.0
FAIL_MARKER = -999.0
HORIZON = 2
DIM = 4


class EchoPolicy(Policy):
    """actions[b, h] = x[b] + h; stalls on STALL_MARKER, raises on FAIL_MARKER."""

    def __init__(self, stall_s: str | float = "30") -> None:
        self.stall_s = float(stall_s)
        self.calls = 0

    def spec(self) -> PolicySpec:
        return PolicySpec(
            name="echo",
            action_shape=(HORIZON, DIM),
            observations={"x": FieldSpec("float32", (DIM,))},
        )

    def infer(self, batch: Batch) -> np.ndarray:
        self.calls += 1
        x = batch.obs["x"]
        if np.any(x[:, 0] == FAIL_MARKER):
            raise ValueError("echo policy refuses FAIL_MARKER rows")
        if np.any(x[:, 0] == STALL_MARKER) and self.stall_s > 0:
            time.sleep(self.stall_s)
        return expected_actions(x)


def expected_actions(x: np.ndarray) -> np.ndarray:
    return (x[:, None, :] + np.arange(HORIZON, dtype=np.float32)[None, :, None]).astype(np.float32)


class HangingPolicy(Policy):
    """Accepts any observations and never answers in time: a hung model."""

    def __init__(self, hang_s: str | float = "30") -> None:
        self.hang_s = float(hang_s)

    def spec(self) -> PolicySpec:
        return PolicySpec(name="hanging", action_shape=(1, 1))

    def infer(self, batch: Batch) -> np.ndarray:
        time.sleep(self.hang_s)
        rows = batch.rows
        return np.zeros((rows, 1, 1), np.float32)

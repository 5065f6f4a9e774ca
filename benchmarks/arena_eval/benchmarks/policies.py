"""Benchmark-only policies.

``FixedLatencyPolicy`` models an accelerator-bound forward pass: each call
takes ``latency_ms`` whatever the batch size, which is how a GPU model
behaves at small batches (kernel launches and weight reads dominate). It is
the regime where batching across clients pays, and the one the seed's
one-request-at-a-time server cannot exploit.

``AffineCostPolicy`` costs ``a + b * rows`` per call (defaults a = 20 ms,
b = 0.2 ms): a GPU forward pass past its small-batch plateau, the model of
``arena-eval bench saturation``. Both *sleep* rather than spin: a GPU forward
pass leaves the host core free, and on a 2-core machine a spinning stand-in
would steal the core the sims and Redis need and measure that instead.
"""

from __future__ import annotations

import time

import numpy as np

from arena_eval.benchmarks.overlap_policy import SleepCostPolicy
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.policy import Batch, Policy


class FixedLatencyPolicy(Policy):
    def __init__(self, latency_ms: str | float = "10", action_shape: str = "16x36") -> None:
        self.latency_s = float(latency_ms) / 1000.0
        h, a = (int(x) for x in str(action_shape).lower().split("x"))
        self.action_shape = (h, a)

    def spec(self) -> PolicySpec:
        return PolicySpec(name="fixed-latency", action_shape=self.action_shape)

    def infer(self, batch: Batch) -> np.ndarray:
        rows = batch.rows
        time.sleep(self.latency_s)
        return np.zeros((rows, *self.action_shape), np.float32)


class AffineCostPolicy(SleepCostPolicy):
    """Sleeps ``base_ms + row_ms * rows`` per call (a GPU stand-in; ``SleepCostPolicy``)."""

    def __init__(
        self, base_ms: str | float = "20", row_ms: str | float = "0.2", action_shape: str = "16x36"
    ) -> None:
        super().__init__(fixed_ms=base_ms, row_ms=row_ms, action_shape=action_shape)

    def spec(self) -> PolicySpec:
        return PolicySpec(name="affine-cost", action_shape=self.action_shape)

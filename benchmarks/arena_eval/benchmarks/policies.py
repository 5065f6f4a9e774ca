"""Benchmark-only policies.

``FixedLatencyPolicy`` models an accelerator-bound forward pass: each call
takes ``latency_ms`` whatever the batch size, which is how a GPU model
behaves at small batches (kernel launches and weight reads dominate). It is
the regime where batching across clients pays, and the one the seed's
one-request-at-a-time server cannot exploit.
"""

from __future__ import annotations

import time

import numpy as np

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

"""``SleepCostPolicy``: a stand-in model whose forward pass costs ``fixed_ms + row_ms * rows``.

Why a sleep and not compute: the overlap benchmark asks how much of the sim's time the
fabric can hide behind inference on *another* device (a GPU, or the pool's own cores). A
sleep costs that time without taking a CPU core from the sim worker being measured, which
on a 2-core machine a busy-looping model would. ``row_ms`` models a model whose cost grows
with the batch (a CPU model, or a GPU past its small-batch plateau); ``fixed_ms``, one whose
cost does not (kernel launches and weight reads at small batches).
"""

from __future__ import annotations

import time

import numpy as np

from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.policy import Batch, Policy


class SleepCostPolicy(Policy):
    """Zero ``(rows, H, A)`` chunks after sleeping ``fixed_ms + row_ms * rows``."""

    def __init__(
        self, fixed_ms: str | float = "0", row_ms: str | float = "1", action_shape: str = "1x4"
    ) -> None:
        self.fixed_s = float(fixed_ms) / 1000.0
        self.row_s = float(row_ms) / 1000.0
        h, a = (int(x) for x in str(action_shape).lower().split("x"))
        self.action_shape = (h, a)

    def spec(self) -> PolicySpec:
        return PolicySpec(name="sleep-cost", action_shape=self.action_shape)

    def infer(self, batch: Batch) -> np.ndarray:
        time.sleep(self.fixed_s + self.row_s * batch.rows)
        return np.zeros((batch.rows, *self.action_shape), np.float32)

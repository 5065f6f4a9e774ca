"""A test policy whose load waits for a file: ``/readyz`` can be seen before the model loads.

Loaded as ``tests.metrics_policies:GatedPolicy`` with ``--policy-arg gate=PATH``;
its constructor (the "model load") returns once ``PATH`` exists, so a test
holds a worker in the loading state for as long as it needs, with no timing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.policy import Batch, Policy

#: The longest a gated load waits before giving up (a test that forgot the gate).
GATE_LIMIT_S = 120.0


class GatedPolicy(Policy):
    """Zero actions ``(rows, 1, 1)``; its load blocks until the ``gate`` file exists."""

    def __init__(self, gate: str) -> None:
        deadline = time.monotonic() + GATE_LIMIT_S
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate file {gate} never appeared")
            time.sleep(0.05)

    def spec(self) -> PolicySpec:
        return PolicySpec(name="gated", action_shape=(1, 1))

    def infer(self, batch: Batch) -> np.ndarray:
        return np.zeros((batch.rows, 1, 1), np.float32)

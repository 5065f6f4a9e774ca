"""A LIBERO-shaped policy for the openpi gateway tests: ``tests.openpi_policies:LiberoLike``.

Its answer is a checkable function of each row -- the state, the image and
the instruction -- so a test proves that every openpi client got *its own*
rows back, that the key mapping fed each input, and that ``prompt`` arrived
as the row's instruction. ``latency_ms`` gives every forward pass a fixed
cost, so concurrent clients' requests meet in one batch.
"""

from __future__ import annotations

import time

import numpy as np

from arena_eval.broker.spec import FieldSpec, PolicySpec
from arena_eval.policy_worker.policy import Batch, Policy

HORIZON = 5
DIM = 7
IMAGE = (8, 8, 3)
STATE = 8


class LiberoLike(Policy):
    """actions[b, h, a] = state[b, a] + h + image[b].mean() + len(instruction[b])."""

    def __init__(self, latency_ms: str | float = "0") -> None:
        self.latency_s = float(latency_ms) / 1000.0

    def spec(self) -> PolicySpec:
        return PolicySpec(
            name="libero-like",
            action_shape=(HORIZON, DIM),
            observations={
                "image": FieldSpec("uint8", IMAGE),
                "state": FieldSpec("float32", (STATE,)),
            },
            needs_instruction=True,
        )

    def infer(self, batch: Batch) -> np.ndarray:
        if self.latency_s:
            time.sleep(self.latency_s)
        image = batch.obs["image"].reshape(batch.rows, -1).astype(np.float64).mean(axis=1)
        lengths = np.array([len(t) for t in batch.instructions], np.float64)
        return expected_chunks(batch.obs["state"], image, lengths)


def expected_chunks(state: np.ndarray, image_mean: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    base = state[:, :DIM].astype(np.float64) + image_mean[:, None] + lengths[:, None]
    return (base[:, None, :] + np.arange(HORIZON)[None, :, None]).astype(np.float32)

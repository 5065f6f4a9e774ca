"""The three request payloads of REFERENCE.md, built once per benchmark run."""

from __future__ import annotations

import numpy as np

PAYLOADS = ("proprio", "cam224", "gr1")
ACTION_SHAPE = (16, 36)
ROWS = 10


def make_payload(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "proprio":
        return {"state": rng.random((ROWS, 39), dtype=np.float32)}
    if kind == "cam224":
        return {
            "rgb": rng.integers(0, 256, (ROWS, 224, 224, 3), dtype=np.uint8),
            "state": rng.random((ROWS, 39), dtype=np.float32),
        }
    if kind == "gr1":
        return {
            "robot_pov_cam_rgb": rng.integers(0, 256, (ROWS, 512, 512, 3), dtype=np.uint8),
            "joint_pos": rng.random((ROWS, 54), dtype=np.float32),
        }
    raise ValueError(f"unknown payload {kind!r}; choose one of {', '.join(PAYLOADS)}")


def payload_bytes(obs: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in obs.values())

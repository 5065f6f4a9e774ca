"""``pusht-heuristic``: a scripted PushT policy, so that the image path runs end to end.

Why a heuristic and not a model: PushT is here to exercise what a pixel policy makes the
fabric do (96x96 frames through the codec, shared memory and lz4), and a test needs a pool
that answers frames without downloading weights. Its success is low (it pushes the T's centre
toward the goal's and ignores the angle), and that is fine: it is a plumbing policy, like
``zero``, that at least moves the block.

Per row it finds the agent and the T:

* ``pixels`` (default): the T is the light-slate-grey pixels of the frame (their centroid,
  scaled to the 512 x 512 workspace), the agent is ``agent_pos``;
* ``state``: agent ``state[0:2]``, T ``state[2:4]``;
* ``keypoints``: the T is the mean of its eight keypoints, the agent ``agent_pos``.

Then it goes behind the T (on the side away from the goal) and, once there, pushes through it
toward the goal; the chunk is ``chunk`` waypoints on the straight line from the agent to that
target. Actions are the agent's target position, as gym-pusht takes them.
"""

from __future__ import annotations

import numpy as np

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec, PolicySpec
from arena_eval.policy_worker.builtins.args import parse_int
from arena_eval.policy_worker.policy import ArgDoc, Batch, Policy

__all__ = ["PushTHeuristicPolicy"]

#: Workspace side (gym-pusht's coordinates are in [0, 512]).
WORKSPACE = 512.0
#: Where the goal is: the T's pose in state coordinates, and its pixels' centroid in frames.
GOAL_STATE = np.array([256.0, 256.0])
GOAL_PIXELS = np.array([227.0, 282.0])
#: How far behind the T the agent lines up, and how far past its centre it pushes.
BEHIND = 70.0
PUSH = 45.0
#: The agent counts as lined up within this distance of the point behind the T.
LINED_UP = 25.0
OBS_KINDS = ("pixels", "state", "keypoints")


def block_in_frames(pixels: np.ndarray) -> np.ndarray:
    """``(B, 2)`` centroid (x, y, workspace units) of the T's pixels in ``(B, S, S, 3)`` frames;
    the workspace centre for a frame with no T pixels."""
    px = pixels.astype(np.int16)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    mask = (b - r > 20) & (b - r < 60) & (g > r) & (r < 170)  # LightSlateGray, not RoyalBlue
    size = pixels.shape[1]
    ys = np.arange(size, dtype=np.float64)[None, :, None]
    xs = np.arange(size, dtype=np.float64)[None, None, :]
    n = mask.sum(axis=(1, 2)).astype(np.float64)
    safe = np.maximum(n, 1.0)
    cx = (mask * xs).sum(axis=(1, 2)) / safe
    cy = (mask * ys).sum(axis=(1, 2)) / safe
    out: np.ndarray = np.stack([cx, cy], axis=1) * (WORKSPACE / size)
    out[n == 0] = WORKSPACE / 2
    return out


def plan(agent: np.ndarray, block: np.ndarray, goal: np.ndarray, chunk: int) -> np.ndarray:
    """``(B, chunk, 2)`` waypoints: line up behind the block, then push it toward ``goal``."""
    to_goal = goal[None, :] - block
    dist = np.linalg.norm(to_goal, axis=1, keepdims=True)
    direction = to_goal / np.maximum(dist, 1e-6)
    behind = block - direction * BEHIND
    lined_up = np.linalg.norm(agent - behind, axis=1) < LINED_UP
    target = np.where(lined_up[:, None], block + direction * PUSH, behind)
    frac = np.arange(1, chunk + 1, dtype=np.float64)[None, :, None] / chunk
    path = agent[:, None, :] + (target - agent)[:, None, :] * frac
    out: np.ndarray = np.clip(path, 0.0, WORKSPACE).astype(np.float32)
    return out


class PushTHeuristicPolicy(Policy):
    """Scripted PushT pusher for ``pusht/<obs>`` tasks; see the module docstring.

    Arguments: ``obs`` (``pixels``, ``state`` or ``keypoints``: the task's observation
    layout, default ``pixels``), ``image_size`` (frame side for ``pixels``, default 96),
    ``chunk`` (waypoints per action chunk, default 8).
    """

    ARGS = {
        "obs": ArgDoc("pixels|state|keypoints", "Observation layout of the pusht/<obs> task."),
        "image_size": ArgDoc("int >= 8", "Frame side for obs=pixels (pusht/pixels-<N>)."),
        "chunk": ArgDoc("int >= 1", "Waypoints per action chunk (H)."),
    }

    def __init__(
        self, obs: str = "pixels", image_size: str | int = 96, chunk: str | int = 8
    ) -> None:
        if obs not in OBS_KINDS:
            raise ConfigError(f"obs must be one of {', '.join(OBS_KINDS)}, got {obs!r}")
        self._obs = obs
        self._size = parse_int(image_size, "image_size", minimum=8)
        self._chunk = parse_int(chunk, "chunk", minimum=1)
        if obs == "pixels":
            fields = {
                "pixels": FieldSpec("uint8", (self._size, self._size, 3)),
                "agent_pos": FieldSpec("float64", (2,)),
            }
            task = "pusht/pixels" if self._size == 96 else f"pusht/pixels-{self._size}"
        elif obs == "state":
            fields = {"state": FieldSpec("float64", (5,))}
            task = "pusht/state"
        else:
            fields = {
                "environment_state": FieldSpec("float64", (16,)),
                "agent_pos": FieldSpec("float64", (2,)),
            }
            task = "pusht/keypoints"
        self._spec = PolicySpec(
            name="pusht-heuristic",
            action_shape=(self._chunk, 2),
            observations=fields,
            tasks=(task,),
        )

    def spec(self) -> PolicySpec:
        return self._spec

    def identity_params(self) -> dict[str, str]:
        return {"obs": self._obs}  # image size and chunk are in the spec itself

    def infer(self, batch: Batch) -> np.ndarray:
        obs = batch.obs
        if self._obs == "state":
            state = np.asarray(obs["state"], dtype=np.float64)
            agent, block, goal = state[:, 0:2], state[:, 2:4], GOAL_STATE
        elif self._obs == "keypoints":
            keypoints = np.asarray(obs["environment_state"], dtype=np.float64)
            agent = np.asarray(obs["agent_pos"], dtype=np.float64)
            block = keypoints.reshape(len(keypoints), 8, 2).mean(axis=1)
            goal = GOAL_STATE
        else:
            agent = np.asarray(obs["agent_pos"], dtype=np.float64)
            block, goal = block_in_frames(obs["pixels"]), GOAL_PIXELS
        return plan(agent, block, goal, self._chunk)

"""ChunkedPolicy: per-env action-chunk buffers, like the seed's client.

A pool returns ``(B, H, A)`` chunks. Each env consumes its chunk one action
per step and asks again only when the chunk runs out or its episode changes,
and only the rows that need a new chunk are sent: with staggered episodes a
request carries a few rows, not all N (the seed sent every env each time).
Each row travels with its context (episode id, step, start flag, task,
instruction), so the policy worker can batch rows of many tasks together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from arena_eval.sim_worker.client import PolicyClient


class ChunkedPolicy:
    """Per-env chunk buffers over a ``PolicyClient``; sends each row with its context.

    Every row sent carries its episode id, its step in the episode (counted
    here: the number of actions its env took since the episode started),
    whether the episode just started (true on the first request of an
    episode), and the task and instruction -- one task per rollout, set here
    or per ``act`` call. A pool that needs instructions refuses rows without
    one (``MissingInstruction``, raised by the client before sending).
    """

    def __init__(
        self, client: PolicyClient, num_envs: int, *, task: str = "", instruction: str = ""
    ) -> None:
        self.client = client
        spec = client.spec or client.connect()
        self.horizon, self.action_dim = spec.action_shape
        self.num_envs = num_envs
        self.task = task
        self.instruction = instruction
        self._chunks = np.zeros((num_envs, self.horizon, self.action_dim), np.float32)
        self._index = np.full(num_envs, self.horizon, np.int64)  # == horizon: empty
        self._steps = np.zeros(num_envs, np.int64)  # step in the current episode
        self._fresh = np.zeros(num_envs, np.bool_)  # started, not yet sent
        self._episodes: list[str | None] = [None] * num_envs
        self.requests = 0
        self.rows_requested = 0

    def reset(self, env_ids: Sequence[int] | np.ndarray | None = None) -> None:
        """Forget the buffered chunks of ``env_ids`` (all envs if None)."""
        ids = np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids, np.int64)
        self._index[ids] = self.horizon
        for i in ids.tolist():
            self._episodes[i] = None

    def will_request(
        self, episode_ids: Sequence[str | int], active: np.ndarray | None = None
    ) -> bool:
        """Whether ``act`` with these arguments would ask the pool (a chunk of an active env
        ran out, or its episode changed); an overlapped rollout runs the others inline."""
        ids = [str(e) for e in episode_ids]
        need = self._index >= self.horizon
        need |= np.fromiter((a != b for a, b in zip(ids, self._episodes, strict=True)), np.bool_)
        if active is not None:
            need &= active
        return bool(need.any())

    def act(
        self,
        obs: Mapping[str, np.ndarray],
        episode_ids: Sequence[str | int],
        *,
        active: np.ndarray | None = None,
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """One action per env, ``(N, A)``; fetches chunks for the envs that need them.

        ``active`` (bool, N) excludes envs that are idle (e.g. done, with no
        episode left to run): they get no request and a zero action.
        ``task``/``instruction`` override the ones given at construction.
        """
        ids = [str(e) for e in episode_ids]
        starts = [i for i in range(self.num_envs) if ids[i] != self._episodes[i]]
        for i in starts:
            self._index[i] = self.horizon
            self._episodes[i] = ids[i]
        if starts:
            self._steps[starts] = 0
            self._fresh[starts] = True
        need = self._index >= self.horizon
        if active is not None:
            need &= active
        rows = np.flatnonzero(need)
        if rows.size:
            everyone = rows.size == self.num_envs
            sub = dict(obs) if everyone else {k: v[rows] for k, v in obs.items()}
            chunk = self.client.infer(
                sub,
                [ids[i] for i in rows.tolist()],
                steps=self._steps if everyone else self._steps[rows],
                starts=self._fresh if everyone else self._fresh[rows],
                tasks=self.task if task is None else task,
                instructions=self.instruction if instruction is None else instruction,
            )
            self._fresh[rows] = False
            self._chunks[rows] = chunk
            self._index[rows] = 0
            self.requests += 1
            self.rows_requested += int(rows.size)
        safe = np.minimum(self._index, self.horizon - 1)
        actions: np.ndarray = self._chunks[np.arange(self.num_envs), safe].copy()
        if active is not None:
            actions[~active] = 0.0
            self._index[active] += 1
            self._steps[active] += 1
        else:
            self._index += 1
            self._steps += 1
        return actions

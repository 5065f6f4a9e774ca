"""What a sim worker keeps from one unit to the next: its env and its pool clients.

Why keep them: building an env (a simulator, perhaps one subprocess per slot)
and opening a pool client (a handshake, a reply stream) cost far more than a
unit's bookkeeping, and consecutive units usually belong to the same job. An
env is rebuilt when the task or its shape changes, or after it raised (it may
be broken); a client is dropped after it was interrupted mid-request, since its
reply stream may still receive the abandoned answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis

from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.settings import RedisSettings
from arena_eval.sim_worker.client import PolicyClient
from arena_eval.sim_worker.envs import VectorEnv, make_env


class EnvCache:
    """The worker's one env, reused across units of the same task and shape."""

    def __init__(self, vectorization: str) -> None:
        self.vectorization = vectorization
        self._env: VectorEnv | None = None
        self._key: tuple[Any, ...] | None = None

    def get(self, spec: JobSpec, num_envs: int) -> VectorEnv:
        """The env for ``spec`` with ``num_envs`` slots (built if the cached one differs)."""
        key = (spec.task, num_envs, spec.max_steps, spec.camera, spec.image_size)
        if self._env is None or self._key != key:
            self.drop()
            self._env = make_env(
                spec.task, num_envs, seed=spec.seed, max_steps=spec.max_steps,
                camera=spec.camera, image_size=spec.image_size, vectorization=self.vectorization,
            )  # fmt: skip
            self._key = key
        return self._env

    def drop(self) -> None:
        """Close the env (best effort); the next ``get`` builds a fresh one."""
        if self._env is not None:
            with contextlib.suppress(Exception):
                self._env.close()
            self._env = None


class PoolClients:
    """One PolicyClient per pool and lane, sharing the worker's Redis client and stop check
    (a double-buffered rollout drives two lanes on two threads: a client each)."""

    def __init__(
        self,
        settings: RedisSettings,
        r: redis.Redis,
        *,
        timeout_s: float,
        should_stop: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self._r = r
        self.timeout_s = timeout_s
        self.should_stop = should_stop
        self._clients: dict[tuple[str, int], PolicyClient] = {}

    def get(self, pool: str, lane: int = 0) -> PolicyClient:
        """The client for ``pool`` and ``lane`` (created without a handshake: the caller
        connects it)."""
        client = self._clients.get((pool, lane))
        if client is None:
            client = PolicyClient(
                pool, self.settings, client=self._r, timeout_s=self.timeout_s,
                handshake=False, should_stop=self.should_stop,
            )  # fmt: skip
            self._clients[(pool, lane)] = client
        return client

    def discard(self, pool: str) -> None:
        """Close and forget the clients of ``pool`` (every lane); the next ``get`` opens new."""
        for key in [k for k in self._clients if k[0] == pool]:
            client = self._clients.pop(key)
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        """Close every client (best effort)."""
        for pool in {k[0] for k in self._clients}:
            self.discard(pool)

"""Every sim-worker knob, its one default and what it does: ``SimWorkerConfig``.

Why one dataclass: the CLI (``arena-eval sim serve``), ``up``/``demo`` and the
Python API each used to spell the defaults out, so they could drift apart (the
policy side did: the stack batched for 5 ms, the CLI for 2 ms). Now the CLI's
option defaults *are* these field defaults, ``SimWorker.from_config`` takes a
config, and a stack passes on only what its user overrode -- like arq's
``create_worker(settings)``. Change a default here and every entry point follows.
Bad values are refused when the config is built (``ConfigError``), so a worker
refuses them at start-up, not on its first job.

Knobs that are not here on purpose: the heartbeat period and TTL
(``broker.fleet.HEARTBEAT_INTERVAL_S`` / ``HEARTBEAT_TTL_S``) are part of the
liveness protocol that ``arena-eval workers`` and every status reader rely on,
not a worker's choice; a worker beats at that period, or three times per lease
if its lease is shorter, so that it renews a lease well before it lapses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.jobs import DEFAULT_NUM_ENVS
from arena_eval.broker.settings import RedisSettings
from arena_eval.sim_worker.envs.gym_env import VECTORIZATIONS, Vectorization

__all__ = ["SimWorkerConfig"]


@dataclass(frozen=True)
class SimWorkerConfig:
    """One sim worker: its env slots, how it leases units, and how long it waits for a pool."""

    #: Env slots: the size of a job that names none, and the most a job may ask for.
    num_envs: int = DEFAULT_NUM_ENVS
    #: A unit whose worker stopped renewing it this long ago (it died) is taken over.
    lease_ms: int = 10_000
    #: How long one blocking read of the unit queue waits before the loop checks again.
    block_ms: int = 1000
    #: Seconds to wait for one policy answer before the request counts as unanswered.
    policy_timeout_s: float = 30.0
    #: Consecutive unanswered policy requests on one unit, from a pool that has live
    #: workers, before the job fails as served by hung or overloaded workers.
    max_policy_timeouts: int = 3
    #: How often a pool that no live worker serves is looked at again; also the pause
    #: after a whole round of deferred units, so a worker with nothing to run never spins.
    pool_poll_s: float = 0.5
    #: ``sync`` steps the env slots in this process; ``async``, one subprocess each.
    vectorization: str = Vectorization.SYNC.value
    #: A unit delivered more times than this (each worker running it died or stalled
    #: past its lease) fails its job instead of killing more workers.
    max_deliveries: int = 5
    #: Double-buffered rollout: the env slots are split into two lanes, and one lane steps
    #: while the other's policy request is in flight (``overlap.py``); per-episode results
    #: are the same either way. Needs at least 2 slots (a job of 1 env runs synchronously).
    overlap: bool = False
    #: Name in the unit group and in ``arena-eval workers``; None: ``host-pid-random``.
    worker_id: str | None = None
    #: Redis to work on; None: ``RedisSettings.from_env()``.
    redis: RedisSettings | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.vectorization not in VECTORIZATIONS:
            problems.append(
                f"vectorization must be one of {', '.join(VECTORIZATIONS)}, "
                f"not {self.vectorization!r}"
            )
        if self.num_envs < 1:
            problems.append(f"num_envs must be at least 1, not {self.num_envs}")
        if self.lease_ms < 100:
            problems.append(f"lease_ms must be at least 100, not {self.lease_ms}")
        if self.policy_timeout_s <= 0:
            problems.append(f"policy_timeout_s must be positive, not {self.policy_timeout_s}")
        if self.max_policy_timeouts < 1:
            problems.append(
                f"max_policy_timeouts must be at least 1, not {self.max_policy_timeouts}"
            )
        if self.max_deliveries < 1:
            problems.append(f"max_deliveries must be at least 1, not {self.max_deliveries}")
        if problems:
            raise ConfigError("invalid sim worker options: " + "; ".join(problems))

    @property
    def settings(self) -> RedisSettings:
        """The Redis settings to use (``redis``, else from the environment)."""
        return self.redis if self.redis is not None else RedisSettings.from_env()

    def knobs(self) -> dict[str, Any]:
        """Every field but the Redis settings, by name: ``SimWorker``'s keyword arguments,
        and what a test compares."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "redis"}

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], redis: RedisSettings | None = None
    ) -> SimWorkerConfig:
        """The config for parsed command-line options named like the fields (others are
        ignored); enum values become their string value."""
        names = {f.name for f in fields(cls)} - {"redis"}
        picked = {
            k: v.value if isinstance(v, Enum) else v for k, v in options.items() if k in names
        }
        return cls(**picked, redis=redis)

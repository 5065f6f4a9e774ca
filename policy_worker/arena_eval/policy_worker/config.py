"""Every policy-worker knob, its one default and what it does: ``PolicyWorkerConfig``.

Why one dataclass: the CLI (``arena-eval policy serve``), ``up``/``demo`` and
the Python API used to repeat the defaults, and they drifted apart (the stack
batched for 5 ms, the CLI for 2 ms). Now the CLI's option defaults *are* these
field defaults, ``serve.serve_pool`` and ``PolicyWorker.from_config`` take a
config, and a stack passes on only what its user overrode -- like arq's
``create_worker(settings)``. Change a default here and every entry point follows.

Knobs that are not here on purpose: the heartbeat period and TTL
(``broker.pool.HEARTBEAT_INTERVAL_S`` / ``HEARTBEAT_TTL_S``) are part of the
liveness protocol every reader of a pool relies on, not a worker's choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.settings import RedisSettings

if TYPE_CHECKING:
    from arena_eval.policy_worker.batching import Batcher

__all__ = ["BatcherFactory", "PolicyWorkerConfig"]

#: Makes a worker's batching policy from its config: a ``Batcher`` class taking the config.
BatcherFactory = Callable[["PolicyWorkerConfig"], "Batcher"]


@dataclass(frozen=True)
class PolicyWorkerConfig:
    """One policy worker: which pool, which policy, and how it batches, leases and waits."""

    #: Pool name that sims send requests to (``--pool``).
    pool: str
    #: Built-in policy name (zero, random, metaworld-expert, torch) or ``module:Class``.
    policy: str
    #: Policy constructor arguments, as ``--policy-arg k=v`` strings give them.
    policy_args: Mapping[str, str] = field(default_factory=dict)
    #: ``auto|cpu|cuda[:N]``; passed to torch policies as their ``device`` argument.
    device: str = "auto"
    #: Most rows per ``policy.infer`` call (what the model's memory is sized for).
    max_batch: int = 64
    #: Longest wait after the first request of a batch for more to join it.
    max_wait_ms: float = 2.0
    #: A request pending this long on another (dead) worker is taken over (autoclaim).
    claim_idle_ms: int = 5000
    #: A request delivered more times than this is dead-lettered, not served again.
    max_deliveries: int = 3
    #: Consumer name in the pool's group; None: ``host-pid-random``.
    worker_id: str | None = None
    #: How long one blocking read waits for a first request before looping (stop checks).
    block_ms: int = 200
    #: Seconds inside one ``infer`` after which the worker counts as hung and stops renewing
    #: its leases, so that live workers take its requests over.
    hung_after_s: float = 300.0
    #: The longest a client counts as active after its last request: the batch window
    #: closes early once every active client has a request in it. A client with a learned
    #: request period is active for two periods + 20 ms at most (``batcher.py``).
    active_client_s: float = 1.0
    #: The batching policy, a ``batcher.Batcher`` class taking this config;
    #: None: ``batcher.WindowBatcher`` (the ``max_wait_ms`` window described above).
    batcher: BatcherFactory | None = None
    #: Redis to serve on; None: ``RedisSettings.from_env()``.
    redis: RedisSettings | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ArenaEvalError(f"max_batch must be >= 1, got {self.max_batch}")

    @property
    def settings(self) -> RedisSettings:
        """The Redis settings to use (``redis``, else from the environment)."""
        return self.redis if self.redis is not None else RedisSettings.from_env()

    def knobs(self) -> dict[str, object]:
        """Every field but the Redis settings, by name (what a test compares)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "redis"}

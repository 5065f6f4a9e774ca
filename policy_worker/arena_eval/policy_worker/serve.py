"""Run a policy worker as a process: check Redis, load the policy, join the pool, serve.

This is what ``arena-eval policy serve`` calls. The order matters to the
person at the terminal: an unreachable Redis fails in seconds (a short retry
budget at start-up, before a possibly slow model load), and "serving" is
announced only once the pool has accepted the worker; every failure up to
then is one ``ArenaEvalError`` (one line from the CLI), never a traceback.
Once serving, the worker's connection keeps the long reconnect budget.

SIGTERM and SIGINT stop the worker gracefully: it stops reading, answers the
batch in flight, deregisters from the pool and returns, so the process exits 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis

from arena_eval.broker import telemetry
from arena_eval.broker.connection import connect, ping
from arena_eval.broker.errors import ArenaEvalError, BrokerUnavailable
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import stop_on_signals
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.policy_worker.stats import WorkerStats

log = logging.getLogger("arena_eval.policy_worker")

#: How long a starting worker tries to reach Redis before it gives up with one line.
STARTUP_RETRY_BUDGET_S = 3.0


class PoolJoinError(ArenaEvalError):
    """Redis refused a command the worker needs to join its pool."""


def build_worker(
    pool: str,
    policy: str,
    policy_args: Mapping[str, str],
    settings: RedisSettings,
    **knobs: Any,
) -> PolicyWorker:
    """``PolicyWorker.from_config`` for positional pool/policy/args/settings (tests, scripts).

    ``knobs`` are ``PolicyWorkerConfig`` fields; an unknown one is a TypeError there.
    """
    config = PolicyWorkerConfig(
        pool=pool, policy=policy, policy_args=dict(policy_args), redis=settings, **knobs
    )
    return PolicyWorker.from_config(config)


def check_reachable(settings: RedisSettings) -> None:
    """Ping Redis with a short retry budget; raise ``BrokerUnavailable`` (one line) if not."""
    client = connect(settings, retry_budget_s=STARTUP_RETRY_BUDGET_S)
    try:
        ping(client, settings)
    finally:
        client.close()


def join(worker: PolicyWorker) -> None:
    """Register ``worker`` in its pool; every failure is an ``ArenaEvalError``."""
    where = worker.settings.masked_url()
    try:
        worker.register()
    except ArenaEvalError:
        raise  # SpecMismatch: another policy serves the pool, and the reason says which
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(
            f"lost Redis at {where} while joining pool {worker.pool!r}: {exc}. Check that it "
            "is running and reachable, then start the worker again."
        ) from None
    except redis.RedisError as exc:
        if isinstance(exc, redis.exceptions.NoPermissionError) or str(exc).startswith("NOPERM"):
            raise  # ACL denials: the CLI names the role the command needs
        raise PoolJoinError(
            f"cannot join pool {worker.pool!r} on {where}: Redis answered "
            f"{type(exc).__name__}: {exc}"
        ) from None


def serve(
    worker: PolicyWorker,
    *,
    burst: bool = False,
    on_serving: Callable[[PolicyWorker], None] | None = None,
) -> WorkerStats:
    """Join the pool, call ``on_serving``, serve until SIGTERM/SIGINT (or an empty queue)."""
    with stop_on_signals(worker.stop, "finishing the batch in flight"):
        try:
            join(worker)
        except BaseException:
            worker.close()  # refused or unreachable: free the model, not only at process exit
            raise
        telemetry.policy_serving(worker.pool, worker.stats)
        if on_serving is not None:
            on_serving(worker)
        return worker.run(burst=burst)


def serve_pool(
    config: PolicyWorkerConfig,
    *,
    burst: bool = False,
    on_serving: Callable[[PolicyWorker], None] | None = None,
) -> WorkerStats:
    """Everything ``policy serve`` does: check Redis, build the worker from ``config``, serve."""
    check_reachable(config.settings)
    return serve(PolicyWorker.from_config(config), burst=burst, on_serving=on_serving)

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

from arena_eval.broker.connection import connect, ping
from arena_eval.broker.errors import ArenaEvalError, BrokerUnavailable
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import stop_on_signals
from arena_eval.policy_worker.registry import load_policy
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
    *,
    device: str | None = None,
    max_batch: int = 64,
    max_wait_ms: float = 2.0,
    claim_idle_ms: int = 5000,
    max_deliveries: int = 3,
    worker_id: str | None = None,
) -> PolicyWorker:
    args = dict(policy_args)
    if device is not None and policy == "torch":
        args.setdefault("device", device)
    instance = load_policy(policy, args)
    return PolicyWorker(
        pool,
        instance,
        settings,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        claim_idle_ms=claim_idle_ms,
        max_deliveries=max_deliveries,
        worker_id=worker_id,
        policy_args=args,
    )


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
        if on_serving is not None:
            on_serving(worker)
        return worker.run(burst=burst)


def serve_pool(
    pool: str,
    policy: str,
    policy_args: Mapping[str, str],
    settings: RedisSettings,
    *,
    burst: bool = False,
    on_serving: Callable[[PolicyWorker], None] | None = None,
    **worker_options: Any,
) -> WorkerStats:
    """Everything ``policy serve`` does: check Redis, build the worker, join, serve.

    ``worker_options`` are ``build_worker``'s keyword arguments, whose defaults live there.
    """
    check_reachable(settings)
    worker = build_worker(pool, policy, policy_args, settings, **worker_options)
    return serve(worker, burst=burst, on_serving=on_serving)

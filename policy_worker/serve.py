"""Run a policy worker as a process: load the policy, handle signals, serve.

This is what ``arena-eval policy serve`` calls. SIGTERM and SIGINT stop the
worker gracefully: it stops reading, answers the batch in flight,
deregisters from the pool and returns, so the process exits 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import stop_on_signals
from arena_eval.policy_worker.registry import load_policy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.policy_worker.stats import WorkerStats

log = logging.getLogger("arena_eval.policy_worker")


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
    )


def serve(worker: PolicyWorker, *, burst: bool = False) -> WorkerStats:
    """Serve until SIGTERM/SIGINT (or, with ``burst``, until the queue is empty)."""
    with stop_on_signals(worker.stop, "finishing the batch in flight"):
        return worker.run(burst=burst)

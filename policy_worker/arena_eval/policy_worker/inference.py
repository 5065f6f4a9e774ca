"""One batch through the policy: concatenate, infer within the row cap, split the answers.

Why apart from the loop: this is the only part that touches the model, and
its rules are about the model, not Redis -- the requests' rows and their
per-row context (episode ids, steps, starts, tasks, instructions) are
concatenated row-aligned into one ``Batch``, ``max_batch`` caps the rows of
every ``infer`` call (``batching.infer_capped``), the output is checked
against the pool's spec, an ``infer`` that raises on a batch is retried
request by request so that one bad request does not fail its neighbours, and
a request whose shared-memory slot was rewritten meanwhile (its client moved
on) is dropped rather than answered with actions for the wrong observation.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import numpy as np

from arena_eval.broker import shm, telemetry
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.protocol import InferRequest, actions_reply
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.batcher import Batcher
from arena_eval.policy_worker.batching import infer_capped
from arena_eval.policy_worker.entries import Pending, rows
from arena_eval.policy_worker.leases import RequestLeases
from arena_eval.policy_worker.policy import Batch, Policy
from arena_eval.policy_worker.stats import WorkerStats

__all__ = ["BatchRunner", "Reply", "request_batch"]

log = logging.getLogger("arena_eval.policy_worker")

#: A request and the actions message that answers it.
Reply = tuple[Pending, dict[str, Any]]


class BatchRunner:
    """Runs batches of decoded requests through ``policy``; failures land in ``Pending.error``."""

    def __init__(
        self,
        policy: Policy,
        spec: PolicySpec,
        *,
        worker_id: str,
        max_batch: int,
        batcher: Batcher,
        leases: RequestLeases,
        reader: shm.SlotReader,
        stats: WorkerStats,
    ) -> None:
        self.policy = policy
        self.spec = spec
        self.worker_id = worker_id
        self.max_batch = max_batch
        self._batcher = batcher
        self._leases = leases
        self._reader = reader
        self._stats = stats

    def answer(self, items: list[Pending]) -> tuple[list[Reply], list[Pending]]:
        """Infer the servable ``items``; return (replies, every item to retire).

        Requests past their deadline are retired unanswered (the requester gave
        up); undecodable ones keep their ``error`` for a dead letter.
        """
        now = time.time()
        good: list[Pending] = []
        done: list[Pending] = []
        for p in items:
            if p.request is not None and p.request.deadline and p.request.deadline < now:
                self._stats.expired += 1  # the requester gave up: answering would be waste
                done.append(p)
            elif p.request is not None:
                good.append(p)
            else:
                done.append(p)
        replies: list[Reply] = []
        if good:
            with self._leases.holding(good):  # the heartbeat thread renews these
                replies.extend(self._infer_batch(good))
        return replies, done + good

    def _infer_batch(self, batch: list[Pending]) -> list[Reply]:
        try:
            actions, infos, infer_s = self._run_policy(batch)
        except Exception as exc:
            if len(batch) > 1:  # isolate the request that breaks the policy
                out: list[Reply] = []
                for p in batch:
                    out.extend(self._infer_batch([p]))
                return out
            p = batch[0]
            p.error = f"policy.infer raised {type(exc).__name__}: {exc}"
            log.warning("infer failed for %s: %s", p.rid, traceback.format_exc(limit=3))
            return []
        t_enc = time.perf_counter()
        n_rows = sum(rows(p) for p in batch)
        out = []
        offset = 0
        for p in batch:
            assert p.request is not None
            n = rows(p)
            if p.ticket is not None and not self._reader.still_valid(p.ticket):
                self._stats.stale += 1  # slot rewritten under us: the client moved on
                offset += n
                continue
            timing = {
                "queue_ms": max(0.0, (p.read_at - p.request.sent) * 1e3),
                "decode_ms": p.decode_ms,
                "infer_ms": infer_s * 1e3,
                "batch_rows": float(n_rows),
                "batch_requests": float(len(batch)),
            }
            chunk = actions[offset : offset + n]
            row_infos = None if infos is None else infos[offset : offset + n]
            offset += n
            out.append((p, actions_reply(p.rid, chunk, self.worker_id, timing, row_infos)))
        encode_ms = (time.perf_counter() - t_enc) * 1e3
        for _p, msg in out:
            msg["timing"]["encode_ms"] = encode_ms
        self._stats.batches += 1
        self._stats.requests += len(batch)
        self._stats.rows += n_rows
        telemetry.policy_batch(out, infer_s, n_rows)
        return out

    def _run_policy(
        self, batch: list[Pending]
    ) -> tuple[np.ndarray, list[dict[str, Any]] | None, float]:
        rows_batch = Batch.concat([request_batch(p.request) for p in batch if p.request])
        if rows_batch.starts.any():
            ids = rows_batch.episode_ids
            self.policy.reset([ids[i] for i in np.flatnonzero(rows_batch.starts).tolist()])
        n_rows = rows_batch.rows
        self._batcher.served(batch)
        t0 = time.perf_counter()
        actions, infos, calls = infer_capped(self.policy.infer, rows_batch, self.max_batch)
        self._stats.infer_calls += calls
        infer_s = time.perf_counter() - t0
        self._stats.infer_s += infer_s
        expected = (n_rows, *self.spec.action_shape)
        if not isinstance(actions, np.ndarray) or actions.shape != expected:
            got = getattr(actions, "shape", type(actions).__name__)
            raise ArenaEvalError(f"policy returned {got}, expected {expected}")
        if actions.dtype.name != self.spec.action_dtype:
            actions = actions.astype(self.spec.action_dtype)
        return actions, infos, infer_s


def request_batch(request: InferRequest) -> Batch:
    """One decoded request as a ``Batch`` (its context lists already one entry per row)."""
    return Batch(
        obs=request.obs,
        episode_ids=request.episode_ids,
        steps=np.array(request.steps, np.int64),
        starts=np.array(request.starts, np.bool_),
        tasks=request.tasks,
        instructions=request.instructions,
    )

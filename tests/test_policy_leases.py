"""The policy worker's parts on their own: owner-checked lease renewal, a plugged-in batcher.

``test_in_flight_renewal_leaves_a_taken_over_request_alone`` is the issue's
renewal-steal test: with the old ``XCLAIM ... 0 JUSTID`` renewal the worker
takes the request back from the worker that legally claimed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import redis

from arena_eval.broker import codec
from arena_eval.broker.constants import F_DATA, F_REPLY, F_RID, POLICY_GROUP
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import decode_reply
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.entries import Pending
from arena_eval.policy_worker.server import PolicyWorker
from tests.policies_for_tests import DIM, EchoPolicy, expected_actions

POOL = "leases"
ECHO = "tests.policies_for_tests:EchoPolicy"


def request_fields(rid: str, reply_key: str, x: np.ndarray) -> dict[bytes, bytes | str]:
    payload = codec.dumps({"kind": "infer", "rid": rid, "client": "c", "obs": {"x": x}})
    return {F_RID: rid, F_REPLY: reply_key, F_DATA: payload}


def owner(r: redis.Redis, stream: str, entry_id: bytes) -> tuple[str, int]:
    (row,) = r.xpending_range(stream, POLICY_GROUP, min=entry_id, max=entry_id, count=1)
    return row["consumer"].decode(), int(row["times_delivered"])


def test_in_flight_renewal_leaves_a_taken_over_request_alone(
    settings: RedisSettings, r: redis.Redis
) -> None:
    worker = PolicyWorker(POOL, EchoPolicy(stall_s=0), settings, claim_idle_ms=100)
    try:
        worker.group.create()
        stream = Keys(settings.prefix).pool_requests(POOL)
        x = np.zeros((1, DIM), np.float32)
        taken_id = r.xadd(stream, request_fields("r1", "", x))  # type: ignore[arg-type]
        kept_id = r.xadd(stream, request_fields("r2", "", x))  # type: ignore[arg-type]
        held = [Pending(e.stream, e.entry_id, e.fields, time.time()) for e in worker.group.read(2)]
        assert [p.entry_id for p in held] == [taken_id, kept_id]
        time.sleep(0.15)  # a long pause: our leases lapse, and another worker takes one over
        r.xclaim(stream, POLICY_GROUP, "other-worker", 100, [taken_id])
        with worker.leases.holding(held[:1]):
            renewed = worker.leases.renew(waiting=held[1:])
        assert owner(r, stream, taken_id) == ("other-worker", 2)  # not stolen back
        assert renewed == 1  # only the one still ours
        assert owner(r, stream, kept_id) == (worker.worker_id, 1)  # renewed, not redelivered
        idle = {row["message_id"]: row["time_since_delivered"]
                for row in r.xpending_range(stream, POLICY_GROUP, "-", "+", 10)}  # fmt: skip
        assert idle[kept_id] < 100  # its lease was reset
        assert worker.leases.renew() == 0  # nothing in flight: nothing renewed
    finally:
        worker.close()


class OneRequestPerBatch:
    """A batching policy that serves requests one at a time (and records that it did)."""

    made: list[OneRequestPerBatch] = []

    def __init__(self, config: PolicyWorkerConfig) -> None:
        self.max_batch = config.max_batch
        self.taken: list[int] = []
        self.served_batches = 0
        OneRequestPerBatch.made.append(self)

    def read_count(self, rows_in_hand: int) -> int:
        return 8

    def gather(
        self,
        items: list[Pending],
        read_more: Callable[[int], list[Pending]],
        stopping: Callable[[], bool],
    ) -> list[Pending]:
        return items + read_more(8)

    def take(self, items: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        self.taken.append(min(1, len(items)))
        return items[:1], items[1:]

    def served(self, batch: Sequence[Pending]) -> None:
        self.served_batches += 1


def test_a_custom_batcher_class_is_plugged_in_and_used(
    settings: RedisSettings, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    reply_key = keys.reply_stream("c")
    config = PolicyWorkerConfig(
        pool=POOL, policy=ECHO, policy_args={"stall_s": "0"}, batcher=OneRequestPerBatch,
        max_wait_ms=200.0, redis=settings,
    )  # fmt: skip
    worker = PolicyWorker.from_config(config)
    worker.group.create()
    xs = [np.full((1, DIM), i, np.float32) for i in range(5)]
    for i, x in enumerate(xs):  # all queued before the worker reads: one batch by default
        r.xadd(keys.pool_requests(POOL), request_fields(f"r{i}", reply_key, x))  # type: ignore[arg-type]
    stats = worker.run(burst=True)
    (batcher,) = [b for b in OneRequestPerBatch.made if b is worker.batcher]
    assert stats.requests == 5 and stats.batches == 5 and stats.rows == 5
    assert batcher.served_batches == 5 and len(batcher.taken) >= 5
    replies = [decode_reply(fields[F_DATA]) for _, fields in r.xrange(reply_key)]
    assert [m["rid"] for m in replies] == [f"r{i}" for i in range(5)]
    for msg, x in zip(replies, xs, strict=True):
        np.testing.assert_array_equal(msg["actions"], expected_actions(x))
        assert msg["timing"]["batch_requests"] == 1.0

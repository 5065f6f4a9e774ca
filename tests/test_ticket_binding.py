"""A shared-memory ticket is honoured only for the client that wrote its slot.

A ticket names a slot file; anyone who can write to the pool's host stream could
otherwise point a worker at another client's slot and have its observations
answered to them. The worker binds a ticket to the client whose reply stream
the request names, and dead-letters any other.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from arena_eval.broker import codec, shm, shm_trust
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import F_REPLY, F_RID, F_SHM
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.server import PolicyWorker
from tests.policies_for_tests import DIM
from tests.test_policy_pool import POOL, ThreadWorker
from tests.worker_procs import wait_until

pytestmark = pytest.mark.skipif(not shm_trust.available(), reason="no usable shm directory")


@pytest.fixture
def worker(settings: RedisSettings) -> Iterator[PolicyWorker]:
    with ThreadWorker(settings, max_wait_ms=1.0) as w:
        yield w


def _ticket_request(writer: shm.SlotWriter, rid: str) -> bytes:
    obs = {"x": np.zeros((1, DIM), np.float32)}
    parts, n = codec.dumps_parts({"kind": "infer", "rid": rid, "obs": obs}, compression="off")
    return writer.write(parts, n).to_wire()


def test_ticket_for_another_clients_slot_is_dead_lettered(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    host_stream = keys.pool_host_requests(POOL, shm_trust.host_id())
    writer = shm.SlotWriter("victim-client", 0)
    try:
        stolen = _ticket_request(writer, "r-stolen")
        r.xadd(host_stream, {F_RID: "r-stolen", F_REPLY: keys.reply_stream("thief"), F_SHM: stolen})
        r.xadd(host_stream, {F_RID: "r-noreply", F_SHM: stolen})
        wait_until(lambda: r.xlen(keys.pool_dead(POOL)) == 2, 10, "two dead letters")
        reasons = [f[b"reason"].decode() for _, f in r.xrange(keys.pool_dead(POOL))]
        assert "was not written by client 'thief'" in reasons[0]
        assert "needs its client's reply stream" in reasons[1]

        # the slot's own client is served
        own = _ticket_request(writer, "r-own")
        r.xadd(
            host_stream, {F_RID: "r-own", F_REPLY: keys.reply_stream("victim-client"), F_SHM: own}
        )
        wait_until(lambda: r.exists(keys.reply_stream("victim-client")), 10, "the owner's reply")
        assert r.xlen(keys.pool_dead(POOL)) == 2
    finally:
        writer.close()

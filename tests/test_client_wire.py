"""PolicyClient on the broker's transport, under RESP2 and RESP3.

The client builds no stream command and parses no reply itself
(``broker/transport.py`` does both), so these run a real pool and a client whose
Redis connection speaks RESP2 or RESP3: answers come back, a stale reply
waiting on the reply stream is dropped as a duplicate, a worker's error reply
is raised, and a closed client leaves no reply stream behind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from arena_eval.broker import transport
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import actions_reply
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient, RemotePolicyError
from tests.policies_for_tests import DIM, FAIL_MARKER, EchoPolicy, expected_actions

POOL = "wire"


@pytest.fixture
def client_redis(client: redis.Redis) -> redis.Redis:
    """conftest's ``client`` (RESP2, then RESP3), by a name that leaves ``client`` free for
    the PolicyClient in the tests' bodies."""
    return client


@pytest.fixture
def pool_worker(settings: RedisSettings) -> Iterator[PolicyWorker]:
    worker = PolicyWorker(POOL, EchoPolicy(), settings, max_wait_ms=1.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "worker did not stop"


def _rows(n: int) -> np.ndarray:
    return np.arange(n * DIM, dtype=np.float32).reshape(n, DIM)


def test_answers_and_duplicates_under_both_protocols(
    settings: RedisSettings, client_redis: redis.Redis, r: redis.Redis, pool_worker: PolicyWorker
) -> None:
    client = PolicyClient(POOL, settings, client=client_redis, timeout_s=10)
    try:
        # a stale answer to another request already waits on the reply stream
        stale = actions_reply("not-mine", np.zeros((1, 2, DIM), np.float32), "w", {})
        for command in transport.reply_commands(client.reply_key, stale):
            r.execute_command(*command)
        x = _rows(3)
        np.testing.assert_array_equal(client.infer({"x": x}, [0, 1, 2]), expected_actions(x))
        assert client.duplicates_dropped == 1
        assert client.requests_sent == 1
        y = _rows(2) + 100.0
        np.testing.assert_array_equal(client.infer({"x": y}, [3, 4]), expected_actions(y))
        assert client.duplicates_dropped == 1 and client.requests_sent == 2
    finally:
        client.close()
    assert not r.exists(client.reply_key)
    assert r.xlen(Keys(settings.prefix).pool_requests(POOL)) == 0


def test_a_worker_error_is_raised_under_both_protocols(
    settings: RedisSettings, client_redis: redis.Redis, pool_worker: PolicyWorker
) -> None:
    with PolicyClient(POOL, settings, client=client_redis, timeout_s=10) as client:
        x = np.full((1, DIM), FAIL_MARKER, np.float32)
        with pytest.raises(RemotePolicyError, match=f"pool '{POOL}' worker"):
            client.infer({"x": x}, [0])

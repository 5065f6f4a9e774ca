"""Blobs: large requests stored as STRINGs keyed by rollout, tickets in the pool stream.

Measured faster than inline stream entries (docs/architecture.md, "Large
requests"), and on a cluster it is what spreads one pool's bytes over the
shards (a blob's hash tag is its client's and rollout's, not the pool's).
Here every request is a blob (``ARENA_BLOB_MIN_BYTES=1``) on whichever server
the suite runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from arena_eval.broker import codec
from arena_eval.broker.constants import F_DATA, F_OBS, F_REPLY, F_RID
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import decode_reply
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient
from tests.policies_for_tests import expected_actions
from tests.test_policy_pool import POOL, ThreadWorker, rows_x
from tests.worker_procs import wait_until


@pytest.fixture
def obs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_BLOBS", "on")
    monkeypatch.setenv("ARENA_BLOB_MIN_BYTES", "1")


@pytest.fixture
def worker(settings: RedisSettings, obs_on: None) -> Iterator[PolicyWorker]:
    with ThreadWorker(settings, max_wait_ms=1.0) as w:
        yield w


def test_a_large_request_is_a_blob_of_its_rollout_deleted_once_answered(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=10, transport="redis") as client:
        client.begin_rollout("job1.0")
        x = rows_x(3)
        np.testing.assert_array_equal(client.infer({"x": x}, [0, 1, 2]), expected_actions(x))
        assert client.requests_sent == 1
        first = keys.rollout_obs(client.client_id, "job1.0", 1)
        wait_until(lambda: not r.exists(first), what="the answered request's blob deleted")
        client.begin_rollout("job1.4")
        x2 = rows_x(2, base=5.0)
        np.testing.assert_array_equal(client.infer({"x": x2}, [4, 5]), expected_actions(x2))
    assert not list(r.scan_iter(match=f"{settings.prefix}rollout:*"))


def test_a_blob_outlives_a_crash_before_the_answer(
    settings: RedisSettings, r: redis.Redis, obs_on: None
) -> None:
    """No worker yet: the blob waits (with its TTL) for whoever serves the ticket later."""
    keys = Keys(settings.prefix)
    with ThreadWorker(settings, max_wait_ms=1.0):
        client = PolicyClient(POOL, settings, timeout_s=0.5, transport="redis")
    try:
        with pytest.raises(Exception, match="no answer"):
            client.infer({"x": rows_x(2)}, [0, 1])
        blob = keys.rollout_obs(client.client_id, "0", 1)
        assert r.exists(blob) and 0 < r.pttl(blob) <= 600_000
        entries = r.xrange(keys.pool_requests(POOL))
        assert [f.get(F_OBS) or f.get(F_OBS.decode()) for _, f in entries] == [blob.encode()]
        fields = entries[0][1]
        assert F_DATA not in fields and F_DATA.decode() not in fields  # only the ticket
        sent = codec.loads(r.get(blob))
        np.testing.assert_array_equal(sent["obs"]["x"], rows_x(2))
    finally:
        client.close()


def _forged(r: redis.Redis, keys: Keys, client: PolicyClient, ticket: str, rid: str) -> None:
    r.xadd(keys.pool_requests(POOL), {F_RID: rid, F_REPLY: client.reply_key, F_OBS: ticket})


def _error_reply(r: redis.Redis, client: PolicyClient, rid: str) -> dict[str, object]:
    def found() -> dict[str, object] | None:
        for _, f in r.xrange(client.reply_key):
            msg = decode_reply(f.get(F_DATA) or f[F_DATA.decode()])  # type: ignore[call-overload]
            if msg["rid"] == rid:
                return msg
        return None

    msg = wait_until(found, what=f"the reply to {rid}")
    assert isinstance(msg, dict)
    return msg


def test_a_ticket_may_only_name_its_requesters_rollout_stream(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with (
        PolicyClient(POOL, settings, timeout_s=10, transport="redis") as victim,
        PolicyClient(POOL, settings, timeout_s=10, transport="redis") as thief,
    ):
        key = keys.rollout_obs(victim.client_id, "0", 7)
        r.set(key, b"victim's observations")  # as if a request of the victim's were pending
        time.sleep(2.2)  # idle for 2 s: a read of the key would reset its idle time
        _forged(r, keys, thief, key, "rid-steal")
        msg = _error_reply(r, thief, "rid-steal")
        assert msg["kind"] == "error"
        assert "requester's rollout blobs" in str(msg["error"])
        dead = r.xrange(keys.pool_dead(POOL))
        assert any(b"requester's rollout blobs" in f[b"reason"] for _, f in dead)
        # never read: the ticket is checked before any blob is fetched (OBJECT does not touch)
        assert int(r.object("idletime", key)) >= 2
        assert r.exists(key)  # and not deleted either


def test_a_ticket_whose_entry_is_gone_gets_an_error_reply(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=10, transport="redis") as client:
        key = keys.rollout_obs(client.client_id, "0", 99)
        _forged(r, keys, client, key, "rid-gone")
        msg = _error_reply(r, client, "rid-gone")
        assert msg["kind"] == "error" and "is gone" in str(msg["error"])


def test_rollout_keys_are_recognised_only_in_their_shape() -> None:
    keys = Keys("arena:")
    key = keys.rollout_obs("host-1-abc", "20261201-120000-a1b2c3.8", 12)
    assert keys.rollout_obs_client(key) == "host-1-abc"
    for bad in ("arena:rollout:{host-1-abc}:obs:1", "arena:pool:{p}:requests",
                "arena:rollout:{@x}:obs:1", "other:rollout:{a@b}:obs:1",
                "arena:rollout:{a@b}:obs:", "arena:rollout:{a@b}:obs:1x",
                "arena:rollout:{a@b@c}:obs:1"):  # fmt: skip
        assert keys.rollout_obs_client(bad) is None

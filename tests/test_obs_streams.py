"""Observation streams: large requests on a rollout's own stream, tickets in the pool stream.

On a cluster this is what spreads one pool's bytes over the shards (the rollout
stream's hash tag is the client's and the rollout's, not the pool's); here it
is forced on (``ARENA_OBS_STREAMS=on``, every request) on whichever server the
suite runs. ``redis-cli XRANGE`` on the rollout's stream shows its observations.
"""

from __future__ import annotations

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
    monkeypatch.setenv("ARENA_OBS_STREAMS", "on")
    monkeypatch.setenv("ARENA_OBS_STREAM_MIN_BYTES", "1")


@pytest.fixture
def worker(settings: RedisSettings, obs_on: None) -> Iterator[PolicyWorker]:
    with ThreadWorker(settings, max_wait_ms=1.0) as w:
        yield w


def test_requests_travel_on_the_rollout_stream_which_ends_with_the_rollout(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=10, transport="redis") as client:
        client.begin_rollout("job1.0")
        first = keys.rollout_obs(client.client_id, "job1.0")
        x = rows_x(3)
        np.testing.assert_array_equal(client.infer({"x": x}, [0, 1, 2]), expected_actions(x))
        entries = r.xrange(first)
        assert len(entries) == 1  # what `redis-cli XRANGE` shows while the rollout runs
        fields = entries[0][1]
        sent = codec.loads(fields.get(F_DATA) or fields[F_DATA.decode()])  # type: ignore[call-overload]
        np.testing.assert_array_equal(sent["obs"]["x"], x)
        assert r.ttl(first) > 0
        client.begin_rollout("job1.4")
        assert not r.exists(first)  # the ended rollout's stream is gone
        x2 = rows_x(2, base=5.0)
        np.testing.assert_array_equal(client.infer({"x": x2}, [4, 5]), expected_actions(x2))
        second = keys.rollout_obs(client.client_id, "job1.4")
        assert r.xlen(second) == 1
    assert not r.exists(second)  # and close deletes the last one


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
    with PolicyClient(POOL, settings, timeout_s=10, transport="redis") as victim, PolicyClient(
        POOL, settings, timeout_s=10, transport="redis"
    ) as thief:
        victim.infer({"x": rows_x(1)}, [0])  # the victim's observation is on its stream
        key = keys.rollout_obs(victim.client_id, "0")
        entry_id = r.xrange(key)[-1][0].decode()
        _forged(r, keys, thief, f"{key}|{entry_id}", "rid-steal")
        msg = _error_reply(r, thief, "rid-steal")
        assert msg["kind"] == "error"
        assert "requester's rollout stream" in str(msg["error"])
        dead = r.xrange(keys.pool_dead(POOL))
        assert any(b"requester's rollout stream" in f[b"reason"] for _, f in dead)


def test_a_ticket_whose_entry_is_gone_gets_an_error_reply(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=10, transport="redis") as client:
        key = keys.rollout_obs(client.client_id, "0")
        _forged(r, keys, client, f"{key}|1-1", "rid-gone")
        msg = _error_reply(r, client, "rid-gone")
        assert msg["kind"] == "error" and "is gone" in str(msg["error"])


def test_rollout_keys_are_recognised_only_in_their_shape() -> None:
    keys = Keys("arena:")
    key = keys.rollout_obs("host-1-abc", "20261201-120000-a1b2c3.8")
    assert keys.rollout_obs_client(key) == "host-1-abc"
    for bad in ("arena:rollout:{host-1-abc}:obs", "arena:pool:{p}:requests",
                "arena:rollout:{@x}:obs", "other:rollout:{a@b}:obs"):  # fmt: skip
        assert keys.rollout_obs_client(bad) is None

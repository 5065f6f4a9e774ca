"""``ConsumerGroup`` against the real test Redis, over RESP2 and RESP3.

The test that matters most: a renewal must not take back an entry that another
consumer has legally claimed (a plain ``XCLAIM ... JUSTID`` renewal does).
"""

from __future__ import annotations

import time

import pytest
import redis

from arena_eval.broker.consumer_group import ConsumerGroup
from arena_eval.broker.keys import Keys

GROUP = "g"


@pytest.fixture
def stream(keys: Keys) -> str:
    return f"{keys.prefix}s"


def member(client: redis.Redis, stream: str, name: str) -> ConsumerGroup:
    group = ConsumerGroup(client, [stream], GROUP, name)
    group.create()
    return group


def owner(client: redis.Redis, stream: str, entry_id: bytes) -> tuple[str, int]:
    (row,) = client.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
    return row["consumer"].decode(), int(row["times_delivered"])


def test_create_is_idempotent_and_read_returns_new_entries(
    client: redis.Redis, stream: str
) -> None:
    alice = member(client, stream, "alice")
    alice.create()
    eid = client.xadd(stream, {"k": "v"})
    assert [(e.stream, e.entry_id, e.fields) for e in alice.read(10)] == [
        (stream, eid, {b"k": b"v"})
    ]
    assert alice.read(10, block_ms=5) == []


def test_renewal_does_not_take_back_an_entry_another_consumer_claimed(
    client: redis.Redis, stream: str
) -> None:
    alice, bob = member(client, stream, "alice"), member(client, stream, "bob")
    eid = client.xadd(stream, {"k": "v"})
    (entry,) = alice.read(1)
    time.sleep(0.03)
    claimed, _ = bob.autoclaim(stream, 20, 10)  # alice's lease lapsed: bob takes it over
    assert [i for i, _ in claimed] == [eid]
    assert alice.renew(stream, [entry.entry_id]) == []  # no longer hers
    assert owner(client, stream, eid) == ("bob", 2)  # still bob's; no delivery counted
    assert bob.renew(stream, [eid]) == [eid]


def test_renewal_resets_only_our_own_leases(client: redis.Redis, stream: str) -> None:
    alice, bob = member(client, stream, "alice"), member(client, stream, "bob")
    a1, a2 = client.xadd(stream, {"i": "1"}), client.xadd(stream, {"i": "2"})
    alice.read(2)
    b1 = client.xadd(stream, {"i": "3"})
    bob.read(1)
    time.sleep(0.05)
    assert alice.renew(stream, [a1, b1, a2, b"99-0"]) == [a1, a2]
    idle = {p.entry_id: p.idle_ms for p in alice.pending(stream)}
    assert idle[a1] < 40 and idle[a2] < 40 and idle[b1] >= 40
    assert alice.deliveries(stream, [a1, a2, b1]) == {a1: 1, a2: 1}  # renewals: no delivery
    claimed, _ = bob.autoclaim(stream, 40, 10)
    assert [i for i, _ in claimed] == [b1]  # alice's renewed leases are not up for grabs


def test_ack_and_delete_then_leave(client: redis.Redis, stream: str) -> None:
    alice = member(client, stream, "alice")
    eid = client.xadd(stream, {"k": "v"})
    alice.read(1)
    alice.leave()  # holds an entry: stays in the group
    assert [c["name"] for c in client.xinfo_consumers(stream, GROUP)] == [b"alice"]
    alice.ack_and_delete(stream, [eid])
    assert client.xlen(stream) == 0 and alice.pending(stream) == []
    alice.leave()
    assert client.xinfo_consumers(stream, GROUP) == []
    ConsumerGroup(client, [f"{stream}:none"], GROUP, "alice").leave()  # no group: skipped


def test_autoclaim_follows_its_cursor_past_live_entries(client: redis.Redis, stream: str) -> None:
    alice, bob = member(client, stream, "alice"), member(client, stream, "bob")
    live = [client.xadd(stream, {"i": str(i)}) for i in range(30)]
    alice.read(30)
    dead = client.xadd(stream, {"who": "dead"})
    ConsumerGroup(client, [stream], GROUP, "dead").read(1)
    time.sleep(0.05)
    assert alice.renew(stream, live) == live  # 30 fresh leases ahead of the dead one
    claimed, _ = bob.autoclaim(stream, 40, 1)  # one page holds 10 entries at COUNT 1
    assert [i for i, _ in claimed] == [dead]

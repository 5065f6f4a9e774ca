"""``broker.transport``: the request/reply commands, and parsing reads under RESP2 and RESP3.

Every test runs on the real test Redis over RESP2 and RESP3, reading both raw
(``execute_chain`` on a dedicated connection, as the client and the worker do)
and through redis-py's own reply callbacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from arena_eval.broker import transport
from arena_eval.broker.constants import (
    DEAD_ENTRY_MAX_BYTES,
    F_DATA,
    F_REPLY,
    F_RID,
    POLICY_GROUP,
    REPLY_STREAM_TTL_S,
)
from arena_eval.broker.consumer_group import ConsumerGroup
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import decode_reply
from arena_eval.broker.wire import Arg, DedicatedConnection, execute_chain


@pytest.fixture(params=["raw", "redis-py"])
def run(request: pytest.FixtureRequest, client: redis.Redis) -> Iterator[Any]:
    """Run commands and return their replies: raw in one write, or one by one via redis-py."""
    if request.param == "raw":
        conn = DedicatedConnection(client)

        def chain(*commands: list[Arg]) -> list[Any]:
            return execute_chain(conn.get(), commands, timeout_s=5.0)

        yield chain
        conn.drop()
    else:

        def each(*commands: list[Arg]) -> list[Any]:
            return [client.execute_command(*command) for command in commands]

        yield each


def test_request_then_reply_read_in_one_write(run: Any, keys: Keys) -> None:
    stream, reply_key = keys.pool_requests("p"), keys.reply_stream("c1")
    send = transport.request_command(stream, "rid-1", reply_key, F_DATA, b"payload")
    results = run(send, transport.reply_read_command(reply_key, b"0-0", 10))
    assert isinstance(results[0], bytes)  # the entry id
    assert transport.parse_entries(results[1]) == []  # nothing yet: nil after BLOCK
    (entry,) = transport.parse_entries(run(["XREAD", "STREAMS", stream, "0-0"])[0])
    assert entry.stream == stream and entry.entry_id == results[0]
    assert entry.fields == {F_RID: b"rid-1", F_REPLY: reply_key.encode(), F_DATA: b"payload"}


def test_reply_commands_are_read_back_with_a_ttl(run: Any, keys: Keys, r: redis.Redis) -> None:
    reply_key = keys.reply_stream("c2")
    msg = {"kind": "error", "rid": "r9", "error": "boom", "worker": "w"}
    run(*transport.reply_commands(reply_key, msg), *transport.reply_commands(reply_key, msg))
    entries = transport.parse_entries(run(transport.reply_read_command(reply_key, "0-0", 10))[0])
    assert [decode_reply(e.fields[F_DATA]) for e in entries] == [msg, msg]
    assert 0 < r.ttl(reply_key) <= REPLY_STREAM_TTL_S
    after = transport.parse_entries(
        run(transport.reply_read_command(reply_key, entries[0].entry_id, 10))[0]
    )
    assert [e.entry_id for e in after] == [entries[1].entry_id]
    assert transport.reply_commands("", msg) == []


def test_group_read_ack_delete_over_two_streams(run: Any, client: redis.Redis, keys: Keys) -> None:
    streams = [keys.pool_requests("p"), keys.pool_host_requests("p", "h1")]
    ConsumerGroup(client, streams, POLICY_GROUP, "w1").create()
    first = run(transport.request_command(streams[0], "a", "", F_DATA, b"1"))[0]
    second = run(transport.request_command(streams[1], "b", "", F_DATA, b"2"))[0]
    read = transport.group_read_command(POLICY_GROUP, "w1", streams, 10, None)
    entries = transport.parse_entries(run(read)[0])
    assert [(e.stream, e.entry_id, e.fields[F_RID]) for e in entries] == [
        (streams[0], first, b"a"),
        (streams[1], second, b"b"),
    ]
    assert transport.parse_entries(run(read)[0]) == []  # nothing new, no BLOCK: at once
    by_stream = {streams[0]: [first], streams[1]: [second]}
    acked = run(*transport.ack_delete_commands(POLICY_GROUP, by_stream))
    assert acked == [1, 1, 1, 1]
    assert client.xlen(streams[0]) == client.xlen(streams[1]) == 0
    assert client.xpending(streams[0], POLICY_GROUP)["pending"] == 0


def test_entry_deleted_while_pending_reads_back_with_no_fields(
    run: Any, client: redis.Redis, keys: Keys
) -> None:
    stream = keys.pool_requests("p")
    ConsumerGroup(client, [stream], POLICY_GROUP, "w1").create()
    eid = run(transport.request_command(stream, "a", "", F_DATA, b"1"))[0]
    run(transport.group_read_command(POLICY_GROUP, "w1", [stream], 10, None))
    client.xdel(stream, eid)
    history = ["XREADGROUP", "GROUP", POLICY_GROUP, "w1", "STREAMS", stream, "0"]
    assert transport.parse_entries(run(history)[0]) == [transport.Entry(stream, eid, {})]


def test_error_replies_are_raised_by_the_parser(run: Any, keys: Keys) -> None:
    read = transport.group_read_command(POLICY_GROUP, "w1", [keys.pool_requests("none")], 1, None)
    if run.__name__ == "each":
        with pytest.raises(redis.ResponseError, match="NOGROUP"):
            run(read)
        return
    (resp,) = run(read)  # execute_chain returns the error in place
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        transport.parse_entries(resp)


def test_dead_letter_is_bounded_and_keeps_the_routing(run: Any, r: redis.Redis, keys: Keys) -> None:
    dead = keys.pool_dead("p")
    fields = {F_RID: b"r", F_REPLY: b"x", F_DATA: b"z" * 100_000, b"e1": b"1", b"e2": b"2"}
    run(transport.dead_letter_command(
        dead, reason="x" * 5000, worker="w", stream="s", entry_id=b"1-1", fields=fields
    ))  # fmt: skip
    ((_, got),) = r.xrange(dead)
    assert got[b"worker"] == b"w" and got[b"entry_id"] == b"1-1" and got[b"orig_fields"] == b"5"
    assert len(got[b"reason"]) == 1000 and got[b"orig:d:bytes"] == b"100000"
    assert sum(len(k) + len(v) for k, v in got.items()) <= DEAD_ENTRY_MAX_BYTES

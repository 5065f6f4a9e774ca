"""One request entry as a policy worker holds it, and how entries are answered.

A worker takes entries from a pool stream, decodes them (or fails to), and
must then answer each exactly once: a reply on the requester's stream, or a
dead letter with the reason (and an error reply when there is a requester).
The commands for that live here; the loop that batches and sends them lives
in ``server.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from arena_eval.broker import codec, shm
from arena_eval.broker.keys import POLICY_GROUP
from arena_eval.broker.protocol import F_DATA, InferRequest
from arena_eval.broker.wire import Arg

REPLY_STREAM_MAXLEN = 64
REPLY_STREAM_TTL_S = 600

# Dead letters are bounded in bytes, per pool: at most DEAD_STREAM_MAXLEN entries
# (exact trimming), each at most about DEAD_ENTRY_MAX_BYTES, so a pool's dead-letter
# stream holds at most DEAD_STREAM_MAX_BYTES of field data whatever is thrown at it.
DEAD_STREAM_MAXLEN = 1000
#: Original field values above this are kept as their first DEAD_PAYLOAD_KEEP_BYTES.
DEAD_PAYLOAD_MAX_BYTES = 4 << 10
DEAD_PAYLOAD_KEEP_BYTES = 4 << 10
#: At most this many original fields are copied (a request has 3: rid, reply, d or shm).
DEAD_MAX_ORIG_FIELDS = 4
DEAD_FIELD_NAME_MAX_BYTES = 64
DEAD_REASON_MAX_CHARS = 1000
#: Upper bound of one dead letter's field names and values (reason, routing, originals).
DEAD_ENTRY_MAX_BYTES = (
    DEAD_MAX_ORIG_FIELDS * (DEAD_PAYLOAD_MAX_BYTES + 2 * DEAD_FIELD_NAME_MAX_BYTES + 40)
    + 4 * DEAD_REASON_MAX_CHARS  # the reason, UTF-8
    + 1024  # worker id, stream, entry id, timestamps, field names
)
DEAD_STREAM_MAX_BYTES = DEAD_STREAM_MAXLEN * DEAD_ENTRY_MAX_BYTES


@dataclass
class Pending:
    """One request entry taken from a stream, decoded or failed."""

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    read_at: float
    rid: str = ""
    reply: str = ""
    request: InferRequest | None = None
    ticket: shm.Ticket | None = None
    error: str | None = None
    decode_ms: float = 0.0


def reply_commands(reply_key: str, msg: dict[str, Any]) -> list[list[Arg]]:
    """XADD the reply, and (every time) refresh the stream's TTL in the same write.

    A reply that recreates the stream of a client that already closed (a late
    duplicate) must not leave a key without a TTL.
    """
    if not reply_key:
        return []
    return [
        ["XADD", reply_key, "MAXLEN", "~", REPLY_STREAM_MAXLEN, "*",
         F_DATA, codec.dumps(msg, compression="off")],
        ["EXPIRE", reply_key, REPLY_STREAM_TTL_S],
    ]  # fmt: skip


def dead_letter_command(p: Pending, dead_stream: str, worker_id: str) -> list[Arg]:
    """XADD to the dead-letter stream: the reason and the original fields, bounded in bytes.

    A value over ``DEAD_PAYLOAD_MAX_BYTES`` is kept as its first
    ``DEAD_PAYLOAD_KEEP_BYTES`` plus ``orig:<name>:bytes`` (its full size);
    the reason, field names and field count are clipped too, so one entry
    never exceeds ``DEAD_ENTRY_MAX_BYTES``, whatever the request held.
    """
    reason = p.error or ""
    if len(reason) > DEAD_REASON_MAX_CHARS:
        reason = reason[: DEAD_REASON_MAX_CHARS - 3] + "..."
    dead: list[Arg] = [
        "XADD", dead_stream, "MAXLEN", DEAD_STREAM_MAXLEN, "*",
        "reason", reason, "worker", worker_id, "stream", p.stream,
        "entry_id", p.entry_id, "at", f"{time.time():.3f}",
    ]  # fmt: skip
    items = list(p.fields.items())
    if len(items) > DEAD_MAX_ORIG_FIELDS:
        dead += ["orig_fields", len(items)]  # how many there were; the first ones are kept
    for k, v in items[:DEAD_MAX_ORIG_FIELDS]:
        key = k if isinstance(k, bytes) else str(k).encode()
        name = b"orig:" + key[:DEAD_FIELD_NAME_MAX_BYTES]
        value = v if isinstance(v, bytes) else str(v).encode()
        if len(value) > DEAD_PAYLOAD_MAX_BYTES:
            dead += [name + b":bytes", len(value)]
            value = value[:DEAD_PAYLOAD_KEEP_BYTES]
        dead += [name, value]
    return dead


def delivery_counts(
    r: redis.Redis, stream: str, consumer: str, ids: list[bytes]
) -> dict[bytes, int]:
    lo, hi = min(ids, key=id_key), max(ids, key=id_key)
    rows = r.xpending_range(stream, POLICY_GROUP, min=lo, max=hi, count=len(ids) + 1000,
                            consumername=consumer)  # fmt: skip
    wanted = set(ids)
    return {
        row["message_id"]: int(row["times_delivered"])
        for row in rows
        if row["message_id"] in wanted
    }


def id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def rows(p: Pending) -> int:
    if p.request is None or not p.request.obs:
        return 0
    return int(next(iter(p.request.obs.values())).shape[0])

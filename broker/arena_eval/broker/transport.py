"""The request/reply protocol on the wire: every stream command, and parsing what comes back.

Why one module: a request travels sim -> Redis -> policy worker -> Redis -> sim,
and each hop is a stream command whose arguments (field names, caps, TTLs,
the consumer group) must agree with the next hop's. Building those commands
here, and nowhere in ``sim_worker/`` or ``policy_worker/``, lets one reader
check the whole protocol, and lets a later transport (a gateway, Redis
Cluster) change it in one place. The walk of one observation:

1. the client sends ``request_command`` and, in the same write, the
   ``reply_read_command`` that waits for its answer (one round trip);
2. the worker's ``group_read_command`` (XREADGROUP on the pool's streams)
   returns the request, ``parse_entries`` turns it into ``(stream, id, fields)``;
3. the worker answers with ``reply_commands`` (or ``dead_letter_command``),
   retires the request with ``ack_delete_commands`` and chains its next
   ``group_read_command`` onto the same write;
4. the client's blocked read returns; ``parse_entries`` again.

Commands are plain argument lists (``wire.Arg``) so that callers can chain
several in one ``wire.execute_chain`` write -- round trips are the fabric's
unit of cost. Replies are parsed the same way under RESP2 (a list of
``[stream, entries]`` pairs) and RESP3 (a map of stream to entries), and
whether they were read raw or through redis-py's callbacks (which turn a flat
field list into a dict).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from redis.exceptions import ResponseError

from arena_eval.broker import codec
from arena_eval.broker.constants import (
    DEAD_FIELD_NAME_MAX_BYTES,
    DEAD_MAX_ORIG_FIELDS,
    DEAD_PAYLOAD_KEEP_BYTES,
    DEAD_PAYLOAD_MAX_BYTES,
    DEAD_REASON_MAX_CHARS,
    DEAD_STREAM_MAXLEN,
    F_DATA,
    F_REPLY,
    F_RID,
    OBS_BLOB_TTL_MS,
    REPLY_READ_COUNT,
    REPLY_STREAM_MAXLEN,
    REPLY_STREAM_TTL_S,
    REQUEST_STREAM_MAXLEN,
)
from arena_eval.broker.fields import as_text
from arena_eval.broker.wire import Arg

__all__ = [
    "Entry",
    "ack_delete_commands",
    "dead_letter_command",
    "delete_reply_stream_command",
    "group_read_command",
    "obs_commands",
    "obs_delete_commands",
    "obs_fetch_command",
    "obs_payload",
    "parse_entries",
    "parse_obs_ticket",
    "reply_commands",
    "reply_read_command",
    "request_command",
]


class Entry(NamedTuple):
    """One stream entry as read: its stream, its id and its fields (``{}`` if deleted)."""

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]


# -- the client's side -------------------------------------------------------------------
def request_command(stream: str, rid: str, reply_key: str, field: bytes, value: Arg) -> list[Arg]:
    """XADD one request to a pool stream: routing fields, then the payload (``d`` or ``shm``).

    The stream is capped (approximately) at ``REQUEST_STREAM_MAXLEN``: workers
    delete what they answer, so the cap only bounds a pool nobody serves.
    """
    return ["XADD", stream, "MAXLEN", "~", REQUEST_STREAM_MAXLEN, "*",
            F_RID, rid, F_REPLY, reply_key, field, value]  # fmt: skip


def obs_commands(blob_key: str, value: Arg) -> list[list[Arg]]:
    """SET a large request's payload as a blob with a TTL (the query buffer becomes the value:
    no copy into a stream listpack, see docs/architecture.md "Large requests")."""
    return [["SET", blob_key, value, "PX", OBS_BLOB_TTL_MS]]


def parse_obs_ticket(value: bytes | str) -> str:
    """The blob key an ``obs`` field names (ValueError if it cannot be a key)."""
    key = as_text(value)
    if not key or len(key) > 1024 or any(c in key for c in " \r\n"):
        raise ValueError(f"malformed blob ticket {key[:200]!r}")
    return key


def obs_fetch_command(blob_key: str) -> list[Arg]:
    """GET a request's blob (not GETDEL: a request reclaimed after a crash needs it again)."""
    return ["GET", blob_key]


def obs_payload(resp: Any) -> bytes | None:
    """The payload of an ``obs_fetch_command`` reply; None when the blob is gone."""
    return resp if isinstance(resp, bytes) else None


def obs_delete_commands(blob_keys: Iterable[str]) -> list[list[Arg]]:
    """DEL answered requests' blobs, one command each (on a cluster each has its own slot)."""
    return [["DEL", key] for key in blob_keys]


def reply_read_command(reply_key: str, after_id: bytes | str, block_ms: int) -> list[Arg]:
    """XREAD BLOCK on the client's own reply stream, for replies after ``after_id``."""
    return ["XREAD", "COUNT", REPLY_READ_COUNT, "BLOCK", block_ms, "STREAMS",
            reply_key, after_id]  # fmt: skip


def delete_reply_stream_command(reply_key: str) -> list[Arg]:
    """DEL the client's reply stream (on close)."""
    return ["DEL", reply_key]


# -- the worker's side --------------------------------------------------------------------
def group_read_command(
    group: str, consumer: str, streams: Sequence[str], count: int, block_ms: int | None
) -> list[Arg]:
    """XREADGROUP new entries (``>``) from ``streams``; without ``block_ms`` it returns at once."""
    cmd: list[Arg] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        cmd += ["BLOCK", block_ms]
    return [*cmd, "STREAMS", *streams, *([">"] * len(streams))]


def ack_delete_commands(
    group: str, by_stream: Mapping[str, Sequence[bytes | str]]
) -> list[list[Arg]]:
    """XACK then XDEL each stream's ``ids``: answered entries leave the PEL and the stream."""
    commands: list[list[Arg]] = []
    for stream, ids in by_stream.items():
        if ids:
            commands.append(["XACK", stream, group, *ids])
            commands.append(["XDEL", stream, *ids])
    return commands


def reply_commands(reply_key: str, msg: Mapping[str, Any]) -> list[list[Arg]]:
    """XADD the reply, and (every time) refresh the stream's TTL in the same write.

    A reply that recreates the stream of a client that already closed (a late
    duplicate) must not leave a key without a TTL. No reply key: no commands.
    """
    if not reply_key:
        return []
    return [
        ["XADD", reply_key, "MAXLEN", "~", REPLY_STREAM_MAXLEN, "*",
         F_DATA, codec.dumps(dict(msg), compression="off")],
        ["EXPIRE", reply_key, REPLY_STREAM_TTL_S],
    ]  # fmt: skip


def dead_letter_command(
    dead_stream: str,
    *,
    reason: str,
    worker: str,
    stream: str,
    entry_id: bytes | str,
    fields: Mapping[Any, Any],
) -> list[Arg]:
    """XADD to a dead-letter stream: the reason and the original fields, bounded in bytes.

    A value over ``DEAD_PAYLOAD_MAX_BYTES`` is kept as its first
    ``DEAD_PAYLOAD_KEEP_BYTES`` plus ``orig:<name>:bytes`` (its full size);
    the reason, field names and field count are clipped too, so one entry
    never exceeds ``DEAD_ENTRY_MAX_BYTES``, whatever the request held.
    """
    if len(reason) > DEAD_REASON_MAX_CHARS:
        reason = reason[: DEAD_REASON_MAX_CHARS - 3] + "..."
    dead: list[Arg] = [
        "XADD", dead_stream, "MAXLEN", DEAD_STREAM_MAXLEN, "*",
        "reason", reason, "worker", worker, "stream", stream,
        "entry_id", entry_id, "at", f"{time.time():.3f}",
    ]  # fmt: skip
    items = list(fields.items())
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


# -- parsing --------------------------------------------------------------------------------
def parse_entries(resp: Any) -> list[Entry]:
    """Entries of an XREAD / XREADGROUP reply, in order; ``[]`` for a timeout (nil).

    Accepts RESP2 (``[[stream, entries], ...]``) and RESP3 (``{stream: entries}``)
    replies, raw or parsed by redis-py (fields as a flat list or a dict, and
    under RESP3 redis-py's extra list around a stream's entries; an entry
    deleted while pending has nil fields: ``{}``). An error reply that
    ``execute_chain`` returned in place is raised.
    """
    if isinstance(resp, ResponseError):
        raise resp
    if not resp:
        return []
    pairs: Iterable[Any] = resp.items() if isinstance(resp, dict) else resp
    out: list[Entry] = []
    for stream, entries in pairs:
        name = as_text(stream)
        for entry_id, flat in _unwrapped(entries):
            out.append(Entry(name, entry_id, _field_dict(flat)))
    return out


def _unwrapped(entries: Any) -> Any:
    """A stream's entries; redis-py's RESP3 callback wraps them in one more list."""
    if not entries:
        return ()
    first = entries[0]
    if len(entries) == 1 and isinstance(first, list) and (not first or not _is_id(first[0])):
        return first
    return entries


def _is_id(item: Any) -> bool:
    return isinstance(item, (bytes, str))


def _field_dict(flat: Any) -> dict[bytes, bytes]:
    if not flat:
        return {}
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=False))

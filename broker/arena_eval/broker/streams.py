"""Consumer-group plumbing shared by every stream arena-eval reads: groups and XAUTOCLAIM.

Why one place: the work-unit queue (sim workers) and the request streams
(policy workers) both lease entries through a consumer group and take over
entries a dead consumer left pending with XAUTOCLAIM. That reply is the one
stream reply whose *shape* depends on the server version, so parsing it twice
means getting it right twice:

* Redis 6.2 answers ``[next_id, entries]``; an entry deleted (XDEL, trimming)
  while pending comes back as a bare nil, without its id, and stays pending.
* Redis 7 answers ``[next_id, entries, deleted_ids]``: deleted entries are
  listed by id (and already dropped from the pending list) instead.
* RESP2 and RESP3 replies have the same shape on both versions, with either
  redis-py parser (hiredis or Python): field lists stay flat
  ``[field, value, ...]`` arrays under RESP3 too. The tests run both protocols.

redis-py's own XAUTOCLAIM reply callback loses information (redis-py 8 drops
Redis 7's deleted ids and turns 6.2's nils into ``(None, None)`` pairs), so
the command goes through a client without that callback (``raw_client``).
"""

from __future__ import annotations

from typing import Any, cast

import redis

from arena_eval.broker import cluster

__all__ = ["autoclaim", "ensure_group", "raw_client"]

_XAUTOCLAIM = "XAUTOCLAIM"


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and stream); safe to repeat (BUSYGROUP is ignored)."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def group_lost(exc: BaseException) -> bool:
    """True if a Redis error means the stream or its group is gone.

    NOGROUP: Redis lost its data (restart without persistence, FLUSHALL).
    UNBLOCKED (Redis 7): the stream was deleted under a blocking read.
    Consumers recreate the group and go on.
    """
    return isinstance(exc, redis.ResponseError) and (
        "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc)
    )


def raw_client(r: redis.Redis) -> redis.Redis:
    """A client on ``r``'s pool that returns XAUTOCLAIM replies unparsed."""
    if cluster.is_cluster(r):
        return cast(redis.Redis, cluster.RawClusterClient(r))
    raw = redis.Redis(connection_pool=r.connection_pool)
    raw.response_callbacks.pop(_XAUTOCLAIM, None)
    return raw


def autoclaim(
    r: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    count: int,
    start: str | bytes = "0-0",
) -> tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]], list[bytes]]:
    """XAUTOCLAIM up to ``count`` entries idle ``min_idle_ms`` or longer, from ``start``.

    Returns ``(next_id, claimed, deleted)``: the cursor for the next call
    (``0-0`` once the pending list has been scanned), the claimed
    ``(entry_id, fields)`` pairs, and ids of entries deleted while pending.
    On Redis 6.2 ``deleted`` only holds ids the reply names: a bare nil entry
    carries none, so it is skipped (the server keeps it pending).

    Pass a ``raw_client`` to avoid building one per call; any client works.
    """
    if _XAUTOCLAIM in getattr(r, "response_callbacks", {_XAUTOCLAIM: None}):
        r = raw_client(r)
    resp: Any = r.execute_command(
        _XAUTOCLAIM, stream, group, consumer, min_idle_ms, start, "COUNT", count
    )
    next_id: bytes = resp[0]
    claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
    deleted: list[bytes] = list(resp[2]) if len(resp) > 2 else []
    for entry in resp[1]:
        if entry is None:  # Redis 6.2: deleted while pending, id not reported
            continue
        entry_id, flat = entry
        if flat is None:  # deleted, as [id, nil]: 6.2.14 and 7.0 never send it; accept it
            deleted.append(entry_id)
            continue
        claimed.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=False))))
    return next_id, claimed, deleted


def autoclaim_scan(
    r: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    count: int,
    *,
    max_pages: int = 100,
) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], list[bytes]]:
    """Like ``autoclaim`` from the start of the PEL, but follow the cursor until it claims.

    One XAUTOCLAIM call inspects at most ``10 * count`` pending entries, so with
    many live (recently renewed) entries ahead of a dead worker's, a single call
    from ``0-0`` finds nothing and the dead worker's entry would wait until the
    live ones finish. Paging through the PEL (bounded) finds it now.
    """
    cursor: str | bytes = "0-0"
    deleted: list[bytes] = []
    for _ in range(max_pages):
        cursor, claimed, gone = autoclaim(r, stream, group, consumer, min_idle_ms, count, cursor)
        deleted.extend(gone)
        if claimed or cursor in (b"0-0", "0-0"):
            return claimed, deleted
    return [], deleted

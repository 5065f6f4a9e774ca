"""``ConsumerGroup``: one consumer's view of a stream consumer group, with owner-checked leases.

Why an object (walrus's ``ConsumerGroup`` is the model): sim workers lease
work units and policy workers lease requests the same way -- read through a
group, renew while working, take over what a dead consumer left pending,
ack and delete when done, leave the group on exit. Binding the client, the
streams, the group and the consumer once makes each of those one short call,
and gives both workers the *same* guarantees.

The one guarantee that needs care is renewal. A lease is an entry's idle time
in the pending list (PEL); its holder resets it every so often, and anyone may
take the entry over once it has been idle longer than the lease. A plain
``XCLAIM ... 0 JUSTID`` resets the idle time *and moves the entry to the
caller*: after a long pause (GC, a stalled VM) it would steal back work that
another consumer legally took over, and both would then run it. ``renew``
therefore runs a Lua script that claims only the entries the PEL still lists
under this consumer, atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from arena_eval.broker import streams as streams_mod
from arena_eval.broker import transport
from arena_eval.broker.fields import as_text
from arena_eval.broker.wire import Arg

__all__ = ["ConsumerGroup", "PendingEntry"]

# KEYS[1] stream; ARGV: group, consumer, entry ids... Resets the idle time of the ids
# the PEL still lists under the consumer (without counting a delivery); returns them.
_RENEW = """
local mine = {}
local claim = {KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    mine[#mine + 1] = ARGV[i]
    claim[#claim + 1] = ARGV[i]
  end
end
if #mine > 0 then
  claim[#claim + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(claim))
end
return mine
"""


@dataclass(frozen=True)
class PendingEntry:
    """One row of the pending list: who holds the entry, for how long, how often delivered."""

    entry_id: bytes
    consumer: str
    idle_ms: int
    deliveries: int


class ConsumerGroup:
    """``consumer`` in ``group`` on ``streams``, through ``client`` (any protocol)."""

    def __init__(
        self, client: redis.Redis, streams: Sequence[str], group: str, consumer: str
    ) -> None:
        self.client = client
        self.streams = list(streams)
        self.group = group
        self.consumer = consumer
        self._raw: redis.Redis | None = None  # made on first autoclaim

    def create(self) -> None:
        """Create the group on every stream (and the streams); safe to repeat."""
        for stream in self.streams:
            streams_mod.ensure_group(self.client, stream, self.group)

    # -- reading ------------------------------------------------------------------------
    def read_command(self, count: int, block_ms: int | None) -> list[Arg]:
        """The XREADGROUP of new entries, for a caller's one-write chain (``wire``)."""
        return transport.group_read_command(
            self.group, self.consumer, self.streams, count, block_ms
        )

    def read(self, count: int, block_ms: int | None = None) -> list[transport.Entry]:
        """Read up to ``count`` new entries; wait up to ``block_ms`` for the first one."""
        resp = self.client.execute_command(*self.read_command(count, block_ms))
        return transport.parse_entries(resp)

    # -- finishing ----------------------------------------------------------------------
    def ack_delete_commands(
        self, by_stream: Mapping[str, Sequence[bytes | str]]
    ) -> list[list[Arg]]:
        """XACK + XDEL per stream, for a caller's one-write chain."""
        return transport.ack_delete_commands(self.group, by_stream)

    def ack_and_delete(self, stream: str, ids: Sequence[bytes | str]) -> None:
        """Retire ``ids`` (done, dropped, garbage, or gone) in one round trip."""
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for command in self.ack_delete_commands({stream: ids}):
            pipe.execute_command(*command)
        pipe.execute()

    # -- leases -------------------------------------------------------------------------
    def autoclaim(
        self, stream: str, min_idle_ms: int, count: int
    ) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], list[bytes]]:
        """Take over up to ``count`` entries idle ``min_idle_ms`` or longer on ``stream``.

        Returns ``(claimed (id, fields) pairs, ids deleted while pending)``. It follows
        XAUTOCLAIM's cursor from the start of the PEL until a page claims something
        (bounded), so live entries ahead of a dead consumer's cannot hide them.
        """
        if self._raw is None:  # redis-py's XAUTOCLAIM callback loses entries (see streams.py)
            callbacks = getattr(self.client, "response_callbacks", None)  # None: a cluster
            raw = callbacks is not None and "XAUTOCLAIM" not in callbacks
            self._raw = self.client if raw else streams_mod.raw_client(self.client)
        return streams_mod.autoclaim_scan(
            self._raw, stream, self.group, self.consumer, min_idle_ms, count
        )

    def renew(self, stream: str, ids: Sequence[bytes | str]) -> list[bytes]:
        """Reset the lease on those ``ids`` this consumer still holds; return them.

        An entry another consumer has claimed, or that was acked, is left alone:
        it is not in the result, and the caller should stop working on it.
        """
        if not ids:
            return []
        mine: Any = self.client.eval(_RENEW, 1, stream, self.group, self.consumer, *ids)
        return [_as_bytes(m) for m in mine or []]

    def check_renew_allowed(self) -> None:
        """Run the renewal script on no entries, so that a Redis user who may not run it
        (no ``+eval`` in its ACL) is refused now, while joining, rather than in a heartbeat
        thread later, where the refusal would only show as leases taken over."""
        self.client.eval(_RENEW, 1, self.streams[0], self.group, self.consumer)

    def pending(
        self,
        stream: str,
        ids: Sequence[bytes | str] | None = None,
        *,
        consumer: str | None = None,
        count: int = 1000,
    ) -> list[PendingEntry]:
        """Pending-list rows of ``stream``: of ``ids`` (all of them, however many), or
        the first ``count``; only ``consumer``'s if given."""
        if ids is not None:
            if not ids:
                return []
            lo, hi = min(ids, key=_id_key), max(ids, key=_id_key)
            count = len(ids) + count
        else:
            lo, hi = "-", "+"
        kwargs: dict[str, Any] = {"consumername": consumer} if consumer is not None else {}
        rows = self.client.xpending_range(stream, self.group, min=lo, max=hi, count=count, **kwargs)
        out = [
            PendingEntry(
                entry_id=_as_bytes(row["message_id"]),
                consumer=as_text(row["consumer"]),
                idle_ms=int(row["time_since_delivered"]),
                deliveries=int(row["times_delivered"]),
            )
            for row in rows
        ]
        if ids is None:
            return out
        wanted = {_as_bytes(i) for i in ids}
        return [p for p in out if p.entry_id in wanted]

    def deliveries(self, stream: str, ids: Sequence[bytes | str]) -> dict[bytes, int]:
        """How often each of ``ids`` this consumer holds was delivered (renewals don't count)."""
        return {p.entry_id: p.deliveries for p in self.pending(stream, ids, consumer=self.consumer)}

    def leave(self, streams: Iterable[str] | None = None) -> None:
        """Remove this consumer from the group on each stream where it holds nothing.

        A consumer that still holds entries stays, so that they remain visible
        (XINFO, ``pending``) until someone takes them over. A stream or group
        that is gone is skipped.
        """
        for stream in self.streams if streams is None else streams:
            try:
                if not self.pending(stream, consumer=self.consumer, count=1):
                    self.client.xgroup_delconsumer(stream, self.group, self.consumer)
            except redis.ResponseError:
                continue


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = as_text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _as_bytes(entry_id: Any) -> bytes:
    return entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()

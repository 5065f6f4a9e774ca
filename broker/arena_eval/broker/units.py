"""The work-unit queue: shards of episodes on one Redis stream, leased by sim workers.

Why a consumer-group stream and not a list: a unit a worker has read stays in
the group's pending list (PEL) until it is acknowledged, so a worker killed
with -9 loses nothing. Its *lease* is the PEL entry's idle time: the holder
resets it every few hundred ms (``renew``), and any worker may take a unit over
with XAUTOCLAIM once it has been idle longer than the lease (``claim_stale``).

The group operations go through ``ConsumerGroup`` (the policy workers' request
leases use the same object). Its ``renew`` and this module's ``requeue`` are
Lua scripts that check the owner atomically, because a plain
``XCLAIM ... 0 JUSTID`` would steal a unit back from the worker that legally
took it over after our lease lapsed (a long GC pause, a stalled VM), and
both would then run it. Results are write-once per episode anyway, so that
would waste work, not corrupt results; the check keeps it from happening.

Units are deleted (XDEL) once done or once their job is terminal, so the
stream only ever holds outstanding work. All jobs share one stream: a sim
worker needs one blocking read to find work from any job.

A unit a worker cannot run now (it is stopping, or no live worker serves the
unit's pool) goes back with ``requeue``: a copy at the tail, the original acked
and deleted. The copy is a new entry, so a hand-back is not a delivery (the
``times_delivered`` that ``max_deliveries`` reads counts crashes, not waits),
and units that wait rotate behind everyone else's: one job whose pool is gone
cannot block the jobs queued after it, and it still comes round on every pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from arena_eval.broker.constants import F_COUNT, F_JOB, F_START, SIM_GROUP
from arena_eval.broker.consumer_group import ConsumerGroup
from arena_eval.broker.fields import as_text
from arena_eval.broker.keys import Keys

__all__ = [
    "F_COUNT",
    "F_JOB",
    "F_START",
    "WorkUnit",
    "claim_stale",
    "deliveries",
    "drop_job_units",
    "enqueue",
    "ensure_units_group",
    "finish",
    "iter_units",
    "leave_group",
    "read_new",
    "renew",
    "requeue",
    "split_shards",
    "unit_group",
]

# KEYS[1] units stream; ARGV: group, entry id, consumer, then the unit's fields.
# Puts a copy at the tail of the stream and retires the original, if still ours.
_REQUEUE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class WorkUnit:
    """Episodes ``[start, start + count)`` of one job; ``entry_id`` is its stream entry."""

    job_id: str
    start: int
    count: int
    entry_id: str = ""

    @property
    def indices(self) -> range:
        return range(self.start, self.start + self.count)

    def fields(self) -> dict[str, str]:
        return {F_JOB: self.job_id, F_START: str(self.start), F_COUNT: str(self.count)}

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: dict[Any, Any]) -> WorkUnit | None:
        """Parse a stream entry; None if it is not a well-formed unit (garbage is dropped)."""
        data = {as_text(k): as_text(v) for k, v in fields.items()}
        try:
            unit = cls(data[F_JOB], int(data[F_START]), int(data[F_COUNT]), as_text(entry_id))
        except (KeyError, ValueError):
            return None
        return unit if unit.job_id and unit.start >= 0 and unit.count >= 1 else None


def split_shards(episodes: int, shard_size: int) -> list[tuple[int, int]]:
    """``(start, count)`` shards covering ``range(episodes)`` in order, each <= shard_size."""
    if episodes < 0 or shard_size < 1:
        raise ValueError(f"need episodes >= 0 and shard_size >= 1, got {episodes}, {shard_size}")
    return [(s, min(shard_size, episodes - s)) for s in range(0, episodes, shard_size)]


def enqueue(pipe: Any, keys: Keys, job_id: str, shards: list[tuple[int, int]]) -> None:
    """Queue one XADD per shard on ``pipe`` (the caller's MULTI/EXEC pipeline)."""
    for start, count in shards:
        pipe.xadd(keys.units(), WorkUnit(job_id, start, count).fields())


def unit_group(r: redis.Redis, keys: Keys, consumer: str) -> ConsumerGroup:
    """``consumer`` in the sim workers' group on the units stream."""
    return ConsumerGroup(r, [keys.units()], SIM_GROUP, consumer)


def ensure_units_group(r: redis.Redis, keys: Keys) -> None:
    """Create the sim workers' consumer group (idempotent)."""
    unit_group(r, keys, "").create()


def read_new(r: redis.Redis, keys: Keys, consumer: str, block_ms: int) -> list[WorkUnit | str]:
    """XREADGROUP one new entry: a unit, or its bare id if the entry is garbage."""
    entries = unit_group(r, keys, consumer).read(1, block_ms)
    return [WorkUnit.from_entry(e.entry_id, e.fields) or as_text(e.entry_id) for e in entries]


def claim_stale(
    raw: redis.Redis, keys: Keys, consumer: str, min_idle_ms: int, count: int = 1
) -> tuple[list[WorkUnit | str], list[str]]:
    """XAUTOCLAIM units whose lease lapsed: (units or garbage ids, ids deleted meanwhile).

    ``raw`` should be a ``streams.raw_client`` (any client works, at the cost of
    building one per call): the reply differs between Redis 6.2 and 7.
    """
    claimed, deleted = unit_group(raw, keys, consumer).autoclaim(keys.units(), min_idle_ms, count)
    found = [WorkUnit.from_entry(eid, fields) or as_text(eid) for eid, fields in claimed]
    return found, [as_text(e) for e in deleted]


def renew(r: redis.Redis, keys: Keys, entry_id: str, consumer: str) -> bool:
    """Reset the lease on a unit we hold; False if it is no longer ours (taken over, done)."""
    return bool(unit_group(r, keys, consumer).renew(keys.units(), [entry_id]))


def requeue(r: redis.Redis, keys: Keys, unit: WorkUnit, consumer: str) -> bool:
    """Hand a unit we hold back to the tail of the queue as a fresh entry, if it is still ours.

    Used on a graceful stop and for a unit whose pool nobody serves; the fresh entry
    starts at zero deliveries.
    """
    flat = [x for kv in unit.fields().items() for x in kv]
    return bool(r.eval(_REQUEUE, 1, keys.units(), SIM_GROUP, unit.entry_id, consumer, *flat))


def deliveries(r: redis.Redis, keys: Keys, entry_id: str) -> int:
    """How often a unit was handed out (first read plus takeovers; lease renewals don't count)."""
    rows = unit_group(r, keys, "").pending(keys.units(), [entry_id])
    return rows[0].deliveries if rows else 0


def finish(r: redis.Redis, keys: Keys, *entry_ids: str) -> None:
    """Acknowledge and delete units (done, dropped, or garbage) in one round trip."""
    unit_group(r, keys, "").ack_and_delete(keys.units(), entry_ids)


def iter_units(r: redis.Redis, keys: Keys, page: int = 1000) -> Iterator[WorkUnit]:
    """Every unit still on the stream (queued or leased), oldest first."""
    lo = "-"
    while True:
        entries: Any = r.xrange(keys.units(), min=lo, max="+", count=page)
        for entry_id, fields in entries:
            unit = WorkUnit.from_entry(entry_id, fields or {})
            if unit is not None:
                yield unit
        if len(entries) < page:
            return
        lo = "(" + as_text(entries[-1][0])


def drop_job_units(r: redis.Redis, keys: Keys, job_id: str) -> int:
    """Delete a terminal job's units still on the stream; returns how many.

    A unit some worker holds is deleted too: that worker sees the job state
    on its next heartbeat and stops; its XACK then clears the PEL entry.
    """
    ids = [u.entry_id for u in iter_units(r, keys) if u.job_id == job_id]
    for i in range(0, len(ids), 500):
        r.xdel(keys.units(), *ids[i : i + 500])
    return len(ids)


def leave_group(r: redis.Redis, keys: Keys, consumer: str) -> None:
    """Remove our consumer from the group if it holds nothing (clean exit; bounds XINFO)."""
    unit_group(r, keys, consumer).leave()

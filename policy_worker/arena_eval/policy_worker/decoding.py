"""Turning a request entry into an ``InferRequest``, or into the reason it cannot be served.

Why apart from the loop: everything in an entry was written by someone who
can write to the pool stream, so decoding is where distrust lives -- a reply
key that is not a client reply stream, a shared-memory ticket naming another
client's slot, a payload whose rid disagrees with the entry's, observations
that do not match the pool's spec, per-row context (episode ids, steps,
starts, tasks, instructions) that is not one entry per row, rows without the
instruction a language-conditioned pool needs. Each ends as ``Pending.error`` (then a dead
letter, and an error reply where the requester is known), never as an
exception in the serve loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from arena_eval.broker import codec, shm, telemetry, transport
from arena_eval.broker.arrays import Buffers
from arena_eval.broker.chain import ChainConnection
from arena_eval.broker.constants import F_DATA, F_OBS, F_REPLY, F_RID, F_SHM
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.fields import as_text
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import InferRequest
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.entries import Pending

#: Socket timeout of a blob fetch (no blocking command: only a dead link takes this long).
_FETCH_S = 5.0

__all__ = [
    "Decoder",
    "admit",
    "answered_blobs",
    "decode",
    "decode_read",
    "fetch_blobs",
    "over_delivered",
]


#: Fetches request blobs: ``[blob key] -> {blob key: payload, or None when it is gone}``.
ObsFetch = Callable[[list[str]], dict[str, bytes | None]]


def decode_read(
    resp: Any,
    keys: Keys,
    spec: PolicySpec,
    reader: shm.SlotReader,
    buffers: Buffers | None = None,
    fetch: ObsFetch | None = None,
) -> list[Pending]:
    """Every entry of a group read's reply (RESP2 or RESP3), decoded; read now.

    The payloads of blob tickets are fetched first, all in one ``fetch``.
    """
    now = time.time()
    pending = [Pending(e.stream, e.entry_id, e.fields, now) for e in transport.parse_entries(resp)]
    fetched = _prefetch(pending, keys, fetch)
    return [decode(p, keys, spec, reader, buffers, fetched=fetched) for p in pending]


class Decoder:
    """One worker's decoding setup: its keys, spec, shm reader, decode buffers and the
    connection blobs are fetched on (``buffers = None``: decompress into fresh arrays)."""

    def __init__(
        self,
        keys: Keys,
        spec: PolicySpec,
        reader: shm.SlotReader,
        conn: ChainConnection,
        buffers: Buffers | None,
        max_deliveries: int,
    ) -> None:
        self.keys, self.spec, self.reader, self.buffers = keys, spec, reader, buffers
        self.max_deliveries = max_deliveries
        self._conn = conn

    def fetch(self, blob_keys: list[str]) -> dict[str, bytes | None]:
        return fetch_blobs(self._conn, blob_keys)

    def read(self, resp: Any) -> list[Pending]:
        """``decode_read`` of a group read's reply."""
        return decode_read(resp, self.keys, self.spec, self.reader, self.buffers, self.fetch)

    def admit(self, p: Pending, deliveries: int) -> Pending:
        """``admit`` of a reclaimed entry."""
        return admit(
            p, deliveries, max_deliveries=self.max_deliveries, keys=self.keys, spec=self.spec,
            reader=self.reader, buffers=self.buffers, fetch=self.fetch,
        )  # fmt: skip


def fetch_blobs(conn: ChainConnection, blob_keys: list[str]) -> dict[str, bytes | None]:
    """The payloads blob tickets point at, in one chain (one round trip)."""
    replies = conn.run([transport.obs_fetch_command(k) for k in blob_keys], timeout_s=_FETCH_S)
    return {k: transport.obs_payload(reply) for k, reply in zip(blob_keys, replies, strict=True)}


def _prefetch(
    pending: list[Pending], keys: Keys, fetch: ObsFetch | None
) -> dict[str, bytes | None]:
    """The blobs of ``pending``'s tickets, checked before they are read: a ticket naming
    anything but its requester's blob is never fetched (``decode`` says why it fails)."""
    refs = []
    for p in pending:
        if F_OBS in p.fields and fetch is not None:
            try:
                refs.append(_owned_blob(p, keys))
            except ArenaEvalError:
                continue
    return fetch(refs) if refs and fetch is not None else {}


def admit(
    p: Pending,
    deliveries: int,
    *,
    max_deliveries: int,
    keys: Keys,
    spec: PolicySpec,
    reader: shm.SlotReader,
    buffers: Buffers | None = None,
    fetch: ObsFetch | None = None,
) -> Pending:
    """A reclaimed entry: marked over-delivered if handed out too often, else decoded."""
    if deliveries > max_deliveries:
        return over_delivered(p, keys, deliveries, max_deliveries)
    return decode(p, keys, spec, reader, buffers, fetched=_prefetch([p], keys, fetch))


def decode(
    p: Pending,
    keys: Keys,
    spec: PolicySpec,
    reader: shm.SlotReader,
    buffers: Buffers | None = None,
    *,
    fetched: Mapping[str, bytes | None] | None = None,
) -> Pending:
    """Fill ``p.rid``, ``p.reply`` and ``p.request`` (or ``p.error``); time it in ``decode_ms``.

    ``buffers`` (the worker's ``DecodeBuffers``) is where lz4 arrays decompress to;
    ``fetched`` holds the payloads of blob tickets (``decode_read``).
    """
    t0 = time.perf_counter()
    p.rid = as_text(p.fields.get(F_RID))
    p.reply = as_text(p.fields.get(F_REPLY))
    try:
        if p.reply and not keys.is_reply_stream(p.reply):
            bad, p.reply = p.reply, ""  # never write to a key a request merely names
            raise ArenaEvalError(f"reply key {bad[:200]!r} is not a client reply stream")
        if F_SHM in p.fields:
            # A ticket may only name a slot written by the client it answers to.
            owner = keys.reply_stream_client(p.reply) if p.reply else None
            if owner is None:
                raise ArenaEvalError("a shared-memory ticket needs its client's reply stream")
            p.ticket = shm.Ticket.from_wire(p.fields[F_SHM], client=owner)
            payload: Any = reader.view(p.ticket)
        elif F_OBS in p.fields:
            payload = _observation(p, keys, fetched or {})
        elif F_DATA in p.fields:
            payload = p.fields[F_DATA]
        else:
            raise ArenaEvalError(
                f"entry has no payload field (fields: {sorted(as_text(k) for k in p.fields)})"
            )
        request = InferRequest.from_message(codec.loads(payload, buffers=buffers))
        if p.rid and request.rid != p.rid:
            raise ArenaEvalError("payload rid does not match the entry's rid field")
        n_rows = spec.check_observations(request.obs)
        request.fill_context(n_rows)  # per-row context: one entry per row, or the defaults
        spec.check_instructions(request.instructions)
        p.request = request
    except ArenaEvalError as exc:
        p.error = f"{type(exc).__name__}: {exc}"
    p.decode_ms = (time.perf_counter() - t0) * 1e3
    return p


def _owned_blob(p: Pending, keys: Keys) -> str:
    """The blob key ``p``'s ticket names; it may only name its requester's blobs."""
    try:
        blob_key = transport.parse_obs_ticket(p.fields[F_OBS])
    except ValueError as exc:
        raise ArenaEvalError(str(exc)) from None
    owner = keys.reply_stream_client(as_text(p.fields.get(F_REPLY)))
    if owner is None or keys.rollout_obs_client(blob_key) != owner:
        raise ArenaEvalError("a blob ticket may only name its requester's rollout blobs")
    return blob_key


def _observation(p: Pending, keys: Keys, fetched: Mapping[str, bytes | None]) -> bytes:
    """The payload of ``p``'s blob, which its answer deletes (``p.blob``)."""
    blob_key = _owned_blob(p, keys)
    payload = fetched.get(blob_key)
    if payload is None:
        raise ArenaEvalError(
            f"request blob {blob_key} is gone (expired, or lost in a failover); the client "
            "sends it again"
        )
    p.blob = blob_key
    return payload


def answered_blobs(items: list[Pending]) -> list[str]:
    """The blobs answered requests were read from: the worker deletes them."""
    return [p.blob for p in items if p.request is not None and p.blob is not None]


def over_delivered(p: Pending, keys: Keys, deliveries: int, max_deliveries: int) -> Pending:
    """Mark a request handed out too often for dead-lettering, without decoding its payload."""
    p.rid = as_text(p.fields.get(F_RID))
    reply = as_text(p.fields.get(F_REPLY))
    p.reply = reply if keys.is_reply_stream(reply) else ""
    p.error = (
        f"request delivered {deliveries} times without an answer "
        f"(max {max_deliveries}): workers crashed or hung while serving it"
    )
    telemetry.over_delivered(p.entry_id)
    return p

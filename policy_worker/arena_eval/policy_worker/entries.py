"""One request entry as a policy worker holds it, and the commands that answer a batch of them.

A worker takes entries from a pool stream, decodes them (or fails to), and
must then answer each exactly once: a reply on the requester's stream, or a
dead letter with the reason (and an error reply when there is a requester).
The commands themselves are built by ``broker.transport``; the loop that
sends them, chained with the acknowledgements and the next read, is
``server.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arena_eval.broker import shm, telemetry, transport
from arena_eval.broker.errors import CodecError
from arena_eval.broker.protocol import InferRequest, error_reply
from arena_eval.broker.wire import Arg

__all__ = ["Pending", "answer_commands", "by_stream", "rows"]


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
    #: The blob key the payload was read from (a blob ticket), deleted with the answer.
    blob: str | None = None


def rows(p: Pending) -> int:
    """Observation rows of a decoded request (0 for one that failed to decode)."""
    if p.request is None or not p.request.obs:
        return 0
    return int(next(iter(p.request.obs.values())).shape[0])


def by_stream(items: Sequence[Pending]) -> dict[str, list[bytes]]:
    """Entry ids grouped by the stream they came from, in order."""
    out: dict[str, list[bytes]] = {}
    for p in items:
        out.setdefault(p.stream, []).append(p.entry_id)
    return out


def answer_commands(
    replies: Sequence[tuple[Pending, dict[str, Any]]],
    items: Sequence[Pending],
    *,
    dead_stream: str,
    worker_id: str,
) -> tuple[list[list[Arg]], int]:
    """The replies, then a dead letter (and an error reply) per failed item.

    Returns the commands and the number of dead letters among them.
    """
    commands: list[list[Arg]] = []
    for p, msg in replies:
        try:
            commands += transport.reply_commands(p.reply, msg)
        except CodecError as exc:  # e.g. an info dict the codec cannot carry
            p.error = f"the reply could not be encoded: {exc}"
    dead = 0
    for p in items:
        if p.error is None:
            continue
        dead += 1
        commands.append(
            transport.dead_letter_command(
                dead_stream, reason=p.error, worker=worker_id, stream=p.stream,
                entry_id=p.entry_id, fields=p.fields,
            )
        )  # fmt: skip
        if p.reply and p.rid:
            commands += transport.reply_commands(p.reply, error_reply(p.rid, p.error, worker_id))
    telemetry.policy_answered(replies, items)
    return commands, dead

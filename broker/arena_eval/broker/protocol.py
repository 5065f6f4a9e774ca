"""The request/reply messages between PolicyClient and policy workers (the payloads).

The commands that carry them are built in ``transport.py``; the field names,
kinds and caps are named in ``constants.py``.

A request is one entry on a pool stream. Its routing fields are plain stream
fields, readable with ``redis-cli XRANGE``, and kept apart from the payload so
that a worker can still answer the requester (with an error) when the payload
itself is garbage:

    rid    request id (the client drops any reply whose rid it is not awaiting)
    reply  the requester's reply stream key
    d      the codec-encoded message, inline            -- or --
    shm    a shared-memory ticket (same-host fast path, see ``shm.py``)

The payload (codec, schema-versioned) is a dict:

    {"kind": "infer", "rid", "client", "sent": unix time, "deadline": unix time,
     "think_ms": ms from the client's previous answer to this request (-1: none),
     "obs": {key: array},
     "episode_ids": [str], "steps": [int], "starts": [bool],
     "tasks": [str], "instructions": [str]}

The five context lists are row-aligned with ``obs`` (one entry per row) or
empty (then every row gets the default: ``""``, 0, False). They are plain
msgpack lists of strings, ints and bools -- never object arrays, never
pickle -- so a request stays readable from any language, and a batch's
strings cost one msgpack list each (packed and unpacked in C).

A reply is one entry on the requester's reply stream with field ``d``:

    {"kind": "actions", "rid", "actions": (B, H, A), "worker", "timing": {...},
     "infos": [dict per row]}       (infos only when the policy returned them)
    {"kind": "error",   "rid", "error": reason, "worker"}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena_eval.broker import codec
from arena_eval.broker.constants import (
    F_DATA,
    F_REPLY,
    F_RID,
    F_SHM,
    KIND_ACTIONS,
    KIND_ERROR,
    KIND_INFER,
)
from arena_eval.broker.errors import CodecError

# The field names and kinds are defined in constants.py; importers of these names here
# (protocol.F_RID ...) read the same objects.
__all__ = [
    "F_DATA",
    "F_REPLY",
    "F_RID",
    "F_SHM",
    "KIND_ACTIONS",
    "KIND_ERROR",
    "KIND_INFER",
    "InferRequest",
    "actions_reply",
    "decode_reply",
    "error_reply",
]


@dataclass
class InferRequest:
    """One request: observations and their per-row context (lists, row-aligned or empty)."""

    rid: str
    client: str
    episode_ids: list[str]
    obs: dict[str, np.ndarray]
    steps: list[int] = field(default_factory=list)
    starts: list[bool] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    sent: float = 0.0
    deadline: float = 0.0
    #: The client's time from its previous answer to this request (its env step, mostly),
    #: measured on its own clock; negative when it has none (its first request).
    think_ms: float = -1.0

    def to_message(self) -> dict[str, Any]:
        return {
            "kind": KIND_INFER,
            "rid": self.rid,
            "client": self.client,
            "episode_ids": self.episode_ids,
            "steps": self.steps,
            "starts": self.starts,
            "tasks": self.tasks,
            "instructions": self.instructions,
            "sent": self.sent,
            "deadline": self.deadline,
            "think_ms": self.think_ms,
            "obs": self.obs,
        }

    def fill_context(self, rows: int) -> None:
        """Expand empty context lists to ``rows`` defaults; raise CodecError on a wrong length."""
        for name, default in _CONTEXT_DEFAULTS:
            values = getattr(self, name)
            if not values:
                setattr(self, name, [default] * rows)
            elif len(values) != rows:
                raise CodecError(f"request has {len(values)} {name} for {rows} observation rows")

    @classmethod
    def from_message(cls, msg: Any) -> InferRequest:
        if not isinstance(msg, Mapping) or msg.get("kind") != KIND_INFER:
            raise CodecError("not an infer request (missing kind='infer')")
        try:
            obs = msg["obs"]
            if not isinstance(obs, Mapping) or not all(
                isinstance(v, np.ndarray) for v in obs.values()
            ):
                raise CodecError("request 'obs' must be a dict of arrays")
            return cls(
                rid=str(msg["rid"]),
                client=str(msg.get("client", "")),
                episode_ids=[str(e) for e in msg.get("episode_ids") or []],
                steps=_typed_list(msg, "steps", int),
                starts=_typed_list(msg, "starts", bool),
                tasks=_typed_list(msg, "tasks", str),
                instructions=_typed_list(msg, "instructions", str),
                obs=dict(obs),
                sent=float(msg.get("sent", 0.0)),
                deadline=float(msg.get("deadline", 0.0)),
                think_ms=float(msg.get("think_ms", -1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"malformed infer request: {exc!r}") from None


_CONTEXT_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("episode_ids", ""),
    ("steps", 0),
    ("starts", False),
    ("tasks", ""),
    ("instructions", ""),
)


def _typed_list(msg: Mapping[str, Any], name: str, kind: type) -> list[Any]:
    """``msg[name]`` as a list whose items are all exactly ``kind`` (checked at C speed)."""
    value = msg.get(name)
    if value is None:
        return []
    if type(value) is not list:
        raise CodecError(f"request {name!r} must be a list, got {type(value).__name__}")
    if value and not set(map(type, value)) <= {kind}:
        bad = next(v for v in value if type(v) is not kind)
        raise CodecError(
            f"request {name!r} must hold only {kind.__name__} values, got {type(bad).__name__}"
        )
    return value


def actions_reply(
    rid: str,
    actions: np.ndarray,
    worker: str,
    timing: Mapping[str, float],
    infos: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    msg = {
        "kind": KIND_ACTIONS,
        "rid": rid,
        "actions": actions,
        "worker": worker,
        "timing": dict(timing),
    }
    if infos is not None:
        msg["infos"] = infos
    return msg


def error_reply(rid: str, error: str, worker: str) -> dict[str, Any]:
    return {"kind": KIND_ERROR, "rid": rid, "error": error, "worker": worker}


def decode_reply(data: bytes) -> dict[str, Any]:
    msg = codec.loads(data)
    if not isinstance(msg, dict) or msg.get("kind") not in (KIND_ACTIONS, KIND_ERROR):
        raise CodecError("reply is not an actions or error message")
    if "rid" not in msg:
        raise CodecError("reply has no rid")
    return msg

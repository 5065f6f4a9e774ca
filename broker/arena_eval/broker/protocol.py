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

    {"kind": "infer", "rid", "client", "episode_ids": [...], "starts": [...],
     "step", "sent": unix time, "deadline": unix time, "obs": {key: array}}

A reply is one entry on the requester's reply stream with field ``d``:

    {"kind": "actions", "rid", "actions": (B, H, A), "worker", "timing": {...}}
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
    rid: str
    client: str
    episode_ids: list[str]
    obs: dict[str, np.ndarray]
    step: int = 0
    starts: list[str] = field(default_factory=list)
    sent: float = 0.0
    deadline: float = 0.0

    def to_message(self) -> dict[str, Any]:
        return {
            "kind": KIND_INFER,
            "rid": self.rid,
            "client": self.client,
            "episode_ids": self.episode_ids,
            "starts": self.starts,
            "step": self.step,
            "sent": self.sent,
            "deadline": self.deadline,
            "obs": self.obs,
        }

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
                starts=[str(e) for e in msg.get("starts") or []],
                obs=dict(obs),
                step=int(msg.get("step", 0)),
                sent=float(msg.get("sent", 0.0)),
                deadline=float(msg.get("deadline", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"malformed infer request: {exc!r}") from None


def actions_reply(
    rid: str, actions: np.ndarray, worker: str, timing: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "kind": KIND_ACTIONS,
        "rid": rid,
        "actions": actions,
        "worker": worker,
        "timing": dict(timing),
    }


def error_reply(rid: str, error: str, worker: str) -> dict[str, Any]:
    return {"kind": KIND_ERROR, "rid": rid, "error": error, "worker": worker}


def decode_reply(data: bytes) -> dict[str, Any]:
    msg = codec.loads(data)
    if not isinstance(msg, dict) or msg.get("kind") not in (KIND_ACTIONS, KIND_ERROR):
        raise CodecError("reply is not an actions or error message")
    if "rid" not in msg:
        raise CodecError("reply has no rid")
    return msg

"""ZeroMQ clients of the peers' protocol, written from its published facts, for gateway tests.

Not the peers' code: a REQ client as GR00T's ``server_client.py`` and the seed's
IsaacLab-Arena v1 client use it (one frame each way), and a DEALER client as
Arena v2 uses it (``[b"", payload]``). Requests are msgpack maps ``{"endpoint",
"data", "api_token"}`` and arrays ``{"__ndarray_class__": True, "as_npy": np.save
bytes}``, loaded with ``allow_pickle=False``. Also ``SlowEchoPolicy``: a fixed
10 ms forward pass whose actions are a function of each row.
"""

from __future__ import annotations

import io
import time
from typing import Any

import msgpack
import numpy as np
import zmq

from arena_eval.broker.spec import FieldSpec, PolicySpec
from arena_eval.policy_worker.policy import Batch, Policy


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buf.getvalue()}
    raise TypeError(type(obj).__name__)


def _hook(obj: dict[Any, Any]) -> Any:
    if obj.get("__ndarray_class__") is True:
        return np.load(io.BytesIO(obj["as_npy"]), allow_pickle=False)
    return obj


def pack(endpoint: str, data: dict[str, Any] | None = None, token: str | None = None) -> bytes:
    msg: dict[str, Any] = {"endpoint": endpoint, "data": data or {}}
    if token is not None:
        msg["api_token"] = token
    out: bytes = msgpack.packb(msg, default=_default, use_bin_type=True)
    return out


def unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, object_hook=_hook, raw=False)


class PeerClient:
    """``kind='req'`` (GR00T, Arena v1) or ``'dealer'`` (Arena v2)."""

    def __init__(
        self, address: str, *, kind: str = "req", token: str | None = None, timeout_ms: int = 30000
    ) -> None:
        self.ctx = zmq.Context()
        self.kind = kind
        self.sock = self.ctx.socket(zmq.REQ if kind == "req" else zmq.DEALER)
        self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.token = token

    def send_raw(self, payload: bytes) -> Any:
        if self.kind == "req":
            self.sock.send(payload)
            return unpack(self.sock.recv())
        self.sock.send_multipart([b"", payload])
        frames = self.sock.recv_multipart()
        assert frames[0] == b"", frames
        return unpack(frames[-1])

    def call(self, endpoint: str, **data: Any) -> Any:
        return self.send_raw(pack(endpoint, data, self.token))

    def close(self) -> None:
        self.ctx.destroy(linger=0)


DIM = 3
HORIZON = 2


def echo_actions(x: np.ndarray) -> np.ndarray:
    """What SlowEchoPolicy answers for rows ``x``: actions[b, h] = 2 * x[b] + h."""
    return (2 * x[:, None, :] + np.arange(HORIZON, dtype=np.float32)[None, :, None]).astype(
        np.float32
    )


class SlowEchoPolicy(Policy):
    """A fixed forward pass of ``latency_ms`` (default 10) per batch; rows answered by echo."""

    def __init__(self, latency_ms: str | float = "10") -> None:
        self.latency_s = float(latency_ms) / 1000.0
        self.last_instructions: list[str] = []

    def spec(self) -> PolicySpec:
        return PolicySpec(
            name="slow-echo",
            action_shape=(HORIZON, DIM),
            observations={"x": FieldSpec("float32", (DIM,))},
        )

    def infer(self, batch: Batch) -> np.ndarray:
        time.sleep(self.latency_s)
        self.last_instructions = list(batch.instructions)  # what the gateway sent per row
        return echo_actions(batch.obs["x"])

"""A direct ZeroMQ REQ/REP policy server: the seed's transport, done well.

It is the baseline the fabric is measured against. Like the seed (and GR00T's
server) it is one REQ/REP socket pair with msgpack messages, but arrays travel
as raw bytes with dtype and shape (openpi's encoding) and are decoded with
``np.frombuffer`` -- no ``np.save``, no copies -- so the comparison is against
the best version of the seed's design, not its slowest.

Two encodings, both measured in every run:

* ``seed``: exactly the seed's wire format -- each array is
  ``{"__ndarray_class__": True, "as_npy": np.save bytes}`` (allow_pickle off);
* ``raw``: arrays as raw bytes with dtype and shape (openpi's encoding),
  decoded with ``np.frombuffer`` -- the seed's design at its best.

Run as ``python -m arena_eval.benchmarks.zmq_baseline PORT [seed|raw]`` to serve the
zero policy until a b"stop" message arrives.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {b"__nd__": True, b"d": arr.dtype.str, b"s": list(arr.shape), b"b": arr.data}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if obj.get(b"__nd__"):
        return np.frombuffer(obj[b"b"], dtype=np.dtype(obj[b"d"])).reshape(obj[b"s"])
    return obj


def _encode_npy(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {b"__ndarray_class__": True, b"as_npy": buf.getvalue()}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode_npy(obj: dict[Any, Any]) -> Any:
    if obj.get(b"__ndarray_class__"):
        return np.load(io.BytesIO(obj[b"as_npy"]), allow_pickle=False)
    return obj


def pack(obj: Any, encoding: str = "raw") -> bytes:
    default = _encode_npy if encoding == "seed" else _encode_default
    return msgpack.packb(obj, default=default)  # type: ignore[no-any-return]


def unpack(data: Any, encoding: str = "raw") -> Any:
    hook = _decode_npy if encoding == "seed" else _decode_hook
    return msgpack.unpackb(data, object_hook=hook, raw=True)


def zero_actions(obs: dict[bytes, np.ndarray], action_shape: tuple[int, int] = (16, 36)) -> Any:
    rows = next(iter(obs.values())).shape[0]
    return np.zeros((rows, *action_shape), np.float32)


def serve(
    port: int,
    encoding: str = "raw",
    *,
    host: str = "127.0.0.1",
    policy: Callable[[dict[bytes, np.ndarray]], Any] = zero_actions,
) -> None:
    """Answer one request at a time, like the seed's server, until a b"stop" message."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(f"tcp://{host}:{port}")
    while True:
        frame = sock.recv(copy=False)
        if frame.bytes[:4] == b"stop":
            sock.send(b"bye")
            break
        obs = unpack(frame.buffer, encoding)[b"obs"]
        sock.send(pack({b"actions": np.asarray(policy(obs))}, encoding), copy=False)
    sock.close()
    ctx.term()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "raw")

"""openpi's wire encoding, spoken by the openpi gateway: msgpack with numpy arrays as byte maps.

openpi-client packs an array as ``{b"__ndarray__": True, b"data": raw bytes,
b"dtype": dtype.str, b"shape": shape}`` and a numpy scalar as
``{b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}``. Unmodified
clients send exactly that, so the gateway must decode and answer in it --
the fabric's own codec (``broker/codec.py``) never reaches an openpi client.

Why not reuse openpi's ``unpack_array`` idea as is: it builds any dtype the
peer names and trusts the byte count. Here a frame from the network is
untrusted, so decoding

* builds arrays only of plain kinds (bool, ints, floats, text) -- object,
  void and complex dtypes are refused, so nothing is ever unpickled;
* requires the byte count to match dtype x shape exactly;
* decodes zero-copy (``np.frombuffer``): the arrays are read-only views of the
  frame, as the policy worker's inputs are.

The message size itself is capped earlier, by the websocket layer
(``max_size``), before a frame is buffered whole (openpi#1043).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from arena_eval.broker.errors import ArenaEvalError

__all__ = ["OpenpiDecodeError", "packb", "unpackb"]

#: dtype kinds accepted from a peer: bool, signed/unsigned ints, floats, unicode/bytes text.
_ARRAY_KINDS = frozenset("biufUS")
_ND = b"__ndarray__"
_NPG = b"__npgeneric__"


class OpenpiDecodeError(ArenaEvalError):
    """A frame is not a valid openpi msgpack-numpy message (or carries a refused dtype)."""


def _dtype(raw: Any) -> np.dtype[Any]:
    name = raw.decode() if isinstance(raw, bytes) else raw
    if not isinstance(name, str):
        raise OpenpiDecodeError(f"array dtype must be a string, got {type(raw).__name__}")
    try:
        dt = np.dtype(name)
    except TypeError as exc:
        raise OpenpiDecodeError(f"unknown dtype {name!r}: {exc}") from None
    if dt.kind not in _ARRAY_KINDS or dt.fields is not None or dt.hasobject:
        raise OpenpiDecodeError(
            f"dtype {name!r} is refused (only bool, int, uint, float and text arrays travel; "
            "object, void and complex dtypes never do)"
        )
    return dt


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if obj.get(_ND) is True:
        dt = _dtype(obj.get(b"dtype"))
        data = obj.get(b"data")
        shape = obj.get(b"shape")
        if not isinstance(data, bytes):
            raise OpenpiDecodeError("array data must be msgpack bin bytes")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(s, int) and s >= 0 for s in shape
        ):
            raise OpenpiDecodeError(f"array shape must be a list of ints >= 0, got {shape!r}")
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize != len(data):
            raise OpenpiDecodeError(
                f"array of {dt.str}{list(shape)} needs {count * dt.itemsize} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dt, count=count).reshape(shape)
    if obj.get(_NPG) is True:
        dt = _dtype(obj.get(b"dtype"))
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise OpenpiDecodeError(f"bad numpy scalar of dtype {dt.str}: {exc}") from None
    return obj


def unpackb(data: bytes) -> Any:
    """Decode one openpi frame; raise OpenpiDecodeError with the reason if it is not one."""
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False)
    except OpenpiDecodeError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise OpenpiDecodeError(
            f"not an openpi msgpack frame: {type(exc).__name__}: {exc}"
        ) from None
    except msgpack.StackError as exc:  # pragma: no cover - nesting beyond msgpack's limit
        raise OpenpiDecodeError(f"frame nested too deeply: {exc}") from None


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"cannot send dtype {obj.dtype} to an openpi client")
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {_ND: True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": arr.shape}
    if isinstance(obj, np.generic):
        return {_NPG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__} to an openpi client")


def packb(obj: Any) -> bytes:
    """Encode a reply (or the metadata frame) as openpi-client's ``unpackb`` reads it."""
    out: bytes = msgpack.packb(obj, default=_encode_default, use_bin_type=True)
    return out

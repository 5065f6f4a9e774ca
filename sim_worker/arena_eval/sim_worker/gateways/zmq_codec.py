"""The wire format of GR00T's and IsaacLab-Arena's ZeroMQ policy clients.

Why its own module: these clients are not ours, so their format is fixed. A
message is one msgpack map ``{"endpoint", "data", "api_token"}``. Arrays are
``{"__ndarray_class__": True, "as_npy": <np.save bytes>}`` and are loaded
with ``allow_pickle=False``: an object array (or a whole pickled message, as
old ``TorchSerializer`` forks send) is refused with an error that says so,
never unpickled. Arena's byte blobs ``{"__blob_class__", "mime",
"as_bytes"}`` are kept as ``Blob``; one carrying ``.npy`` bytes is an array.
Replies use the same encoding; numpy scalars become plain numbers.

Why two steps (``decode_envelope``, then ``decode_data``): the envelope is
unpacked with plain msgpack so the gateway checks ``api_token`` before any
array is loaded: a client without the token never gets numpy to parse its bytes.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from arena_eval.sim_worker.gateways.core import GatewayError

NDARRAY = "__ndarray_class__"
BLOB = "__blob_class__"
MODALITY_CONFIG = "__ModalityConfig_class__"
NPY_MIMES = ("application/x-npy", "application/npy", "application/octet-stream+npy")
#: The first bytes of a pickle, protocols 2 to 5 (PROTO opcode, then the protocol).
_PICKLE_HEADS = tuple(bytes([0x80, p]) for p in range(2, 6))


@dataclass(frozen=True)
class Blob:
    """An Arena bytes blob whose mime type the gateway does not turn into an array."""

    mime: str
    data: bytes


def looks_pickled(payload: bytes) -> bool:
    return payload[:2] in _PICKLE_HEADS


def _pickle_error(where: str) -> GatewayError:
    return GatewayError(
        f"{where} is pickled; this gateway never unpickles. Send msgpack with arrays as "
        '{"__ndarray_class__": True, "as_npy": np.save bytes} (GR00T >= N1.6 and '
        "IsaacLab-Arena clients do; old TorchSerializer forks must upgrade)",
        source="pickle",
    )


#: numpy parses a .npy header with ``ast.literal_eval``, and CPython 3.11-3.12 can fail
#: ("AST constructor recursion depth mismatch") when two threads do that at once; the gateway
#: decodes on its worker threads, so loads take turns (a header parse is microseconds).
_NPY_LOAD = threading.Lock()


def load_npy(raw: bytes) -> np.ndarray:
    """An array from np.save bytes, never unpickling."""
    try:
        with _NPY_LOAD:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _pickle_error("an array (dtype object)") from None
        raise GatewayError(
            f"an array's as_npy bytes are not .npy: {exc}", source="request_decode"
        ) from None
    except Exception as exc:  # numpy raises several kinds on truncated input
        raise GatewayError(
            f"an array's as_npy bytes are not .npy: {exc}", source="request_decode"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise GatewayError("as_npy must hold one array, not an archive", source="request_decode")
    return arr


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if obj.get(NDARRAY) is True:
        raw = obj.get("as_npy")
        if not isinstance(raw, bytes):
            raise GatewayError("__ndarray_class__ without as_npy bytes", source="request_decode")
        return load_npy(raw)
    if BLOB in obj:
        raw, mime = obj.get("as_bytes"), str(obj.get("mime", ""))
        if not isinstance(raw, bytes):
            raise GatewayError("__blob_class__ without as_bytes bytes", source="request_decode")
        if mime in NPY_MIMES or raw[:6] == b"\x93NUMPY":
            return load_npy(raw)
        return Blob(mime, raw)
    return obj


def decode_envelope(payload: bytes) -> dict[str, Any]:
    """The request map, arrays still as their raw marked maps (nothing loaded yet).

    GatewayError (source ``pickle`` or ``request_decode``) when it is not one msgpack map.
    """
    if looks_pickled(payload):
        raise _pickle_error("the message")
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise GatewayError(
            f"malformed message: not msgpack ({type(exc).__name__}: {exc})",
            source="request_decode",
        ) from None
    if not isinstance(msg, dict):
        raise GatewayError(
            f"malformed message: expected a map with 'endpoint', got {type(msg).__name__}",
            source="request_decode",
        )
    return msg


def decode_data(obj: Any) -> Any:
    """``obj`` with its marked maps turned into arrays and blobs (innermost first)."""
    if isinstance(obj, dict):
        return _decode_hook({k: decode_data(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [decode_data(v) for v in obj]
    return obj


def decode(payload: bytes) -> dict[str, Any]:
    """One request map with its arrays loaded (``decode_envelope`` then ``decode_data``)."""
    msg: dict[str, Any] = decode_data(decode_envelope(payload))
    return msg


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {NDARRAY: True, "as_npy": buf.getvalue()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Blob):
        return {BLOB: True, "mime": obj.mime, "as_bytes": obj.data}
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(reply: Any) -> bytes:
    out: bytes = msgpack.packb(reply, default=_encode_hook, use_bin_type=True)
    return out


def modality_config(delta_indices: list[int], modality_keys: list[str]) -> dict[str, Any]:
    """GR00T's ModalityConfig as it travels: a marked map around its JSON fields."""
    return {
        MODALITY_CONFIG: True,
        "as_json": {"delta_indices": delta_indices, "modality_keys": modality_keys},
    }

"""The message codec: the bytes of every request, reply and observation on the wire.

It sits on the hot path of every policy call (a GR1 request is ~7.9 MB of
camera frames), so the format is built so that the array bytes are never
touched by Python and, on the receiving side, never copied:

* **msgpack, never pickle.** msgpack is fast, compact, language-neutral and,
  above all, decoding it cannot run code; a policy server reads messages from
  anyone who can write to Redis. JSON cannot hold bytes, and protobuf would
  need a schema per payload.
* **Arrays outside msgpack.** The header is msgpack of the object with each
  numpy array replaced by a small descriptor (``ExtType``); the array bytes
  follow the header as separate segments. Packing them into msgpack ``bin``
  would copy every byte twice more and give them no alignment.
* **64-byte alignment.** Each segment starts at a multiple of 64 bytes from the
  message start, so a receiver that reads into an aligned buffer gets arrays
  aligned for any SIMD width and cache line. From a CPython ``bytes`` object
  the address alignment is 16, still enough for numpy's ``aligned`` flag for
  every allowed dtype.
* **Zero copy.** ``loads`` wraps raw segments with ``np.frombuffer`` on the
  buffer it was given; ``dumps_parts`` returns memoryviews of the caller's
  arrays for a vectored socket write; ``dumps`` copies the bytes once (the
  final join).
* **Strict decoding.** Anything malformed (truncated, trailing bytes, corrupt
  lz4, bad descriptors, unknown extension types, non-zero padding) raises
  ``CodecError`` and nothing else, and no input can make the decoder allocate
  more than a small multiple of its own length or of ``max_size``.

Wire format, schema version 1 (all integers little-endian)::

    0   b"AEv"             magic
    3   u8                 schema version (SCHEMA_VERSION)
    4   u32                H, length of the msgpack header
    8   H bytes            msgpack header
    -- only if the message carries arrays --
        zero padding up to data_start = align64(8 + H)
        segment 0 at data_start + 0, segment i at data_start + align64(end of segment i-1),
        zero padding between segments
    The message ends exactly at the end of the last segment (or at 8 + H).

Array descriptors and compression are described in ``broker/arrays.py``.

What travels: dict (str or int keys), list and tuple (tuples come back as
lists), str, int (-2**63 .. 2**64-1), float, bool, None, bytes (bytearray and
memoryview come back as bytes), numpy arrays of bool and every fixed-size
int/uint/float/complex dtype, any shape, order or byte order. numpy scalars
(``np.float32(1)``, ``np.int64(3)``, also ``np.float64``) are sent as **0-d
arrays**, so their exact dtype survives; ``np.str_``/``np.bytes_`` become
str/bytes. Arrays come back C-contiguous and little-endian (native on every
platform we run on). Large ``bytes`` values stay in the msgpack header; send
big blobs as uint8 arrays to get zero-copy decoding.

Decoded arrays: uncompressed arrays are views of the input buffer, read-only
when it is ``bytes`` (writable for a ``bytearray``) and keep it alive;
decompressed arrays own their memory and are read-only. Call ``.copy()`` or
``np.array(x)`` if you need to write. ``loads(..., buffers=)`` decompresses
into memory the caller hands out instead (the policy worker reuses it, so a
7.9 MB GR1 frame stack does not page-fault fresh memory on every request).

``max_size`` bounds both the message length and the bytes of array data it
carries (compressed arrays count at their decompressed size), on both sides,
so anything ``dumps`` accepts, ``loads`` with the same limit accepts too.
"""

from __future__ import annotations

import re
import struct
from typing import Any, cast

import msgpack
import numpy as np
import numpy.typing as npt

from arena_eval.broker.arrays import (
    ARRAY_EXT,
    LZ4,
    Buffers,
    Compression,
    align,
    encode_array,
    pack_descriptor,
    padding,
    parse_descriptor,
    read_array,
)
from arena_eval.broker.errors import CodecError, ConfigError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAGIC",
    "SCHEMA_VERSION",
    "CodecError",
    "Compression",
    "dumps",
    "dumps_parts",
    "loads",
]

#: Bumped on any incompatible change of the wire format; both sides must agree.
SCHEMA_VERSION: int = 1
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
MAGIC = b"AEv"

Part = bytes | memoryview

_PRELUDE = struct.Struct("<3sBI")
_MAX_HEADER = 0xFFFFFFFF
#: Deeper nesting is refused on encode; msgpack's decoder stops at 1024.
_MAX_DEPTH = 256
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_KEYS = frozenset({str, int})
_SUPPORTED = "dict, list, tuple, str, int, float, bool, None, bytes, numpy arrays and numpy scalars"
#: msgpack decodes its reserved timestamp extension (-1) itself, without calling
#: ext_hook. These are all encodings of it; only if one occurs in the header do
#: we pay for a walk of the decoded object to reject it.
_TIMESTAMP = re.compile(
    rb"\xd6\xff|\xd7\xff|\xc7[\x04\x08\x0c]\xff|\xc8\x00[\x04\x08\x0c]\xff"
    rb"|\xc9\x00\x00\x00[\x04\x08\x0c]\xff"
)


# --------------------------------------------------------------------------- encode


def dumps(
    obj: Any,
    *,
    compression: Compression | str = Compression.AUTO,
    max_size: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> bytes:
    """Encode ``obj`` into one ``bytes`` message (the array bytes are copied once)."""
    parts, _ = dumps_parts(obj, compression=compression, max_size=max_size)
    return b"".join(parts)


def dumps_parts(
    obj: Any,
    *,
    compression: Compression | str = Compression.AUTO,
    max_size: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> tuple[list[Part], int]:
    """Encode ``obj`` as a list of buffers whose concatenation is ``dumps(obj)``, and its length.

    The first part is the prelude, header and padding; then come array segments
    and padding pieces, at most ``1 + 2 * arrays`` parts in all. Uncompressed
    arrays that are already little-endian and C-contiguous appear as
    memoryviews of the caller's arrays (no copy): do not modify them until the
    parts have been written.
    """
    limit = _check_limit(max_size)
    encoder = _Encoder(_check_mode(compression), limit)
    try:
        tree = encoder.value(obj, 0)
    except _EncodeError as exc:
        raise CodecError(exc.describe()) from None
    except RecursionError:
        raise CodecError("cannot encode: the object is nested too deeply") from None
    header = _pack_header(tree)
    prelude = _PRELUDE.pack(MAGIC, SCHEMA_VERSION, len(header))
    head_end = _PRELUDE.size + len(header)
    if not encoder.segments:
        _check_size("message", head_end, limit)
        return [prelude + header], head_end
    data_start = align(head_end)
    total = data_start + encoder.cursor
    _check_size("message", total, limit)
    parts: list[Part] = [prelude + header + padding(data_start - head_end)]
    pos = 0
    for offset, stored in encoder.segments:
        if offset != pos:
            parts.append(padding(offset - pos))
        if len(stored):
            parts.append(stored)
        pos = offset + len(stored)
    return parts, total


class _EncodeError(Exception):
    """An unsupported value; collects its path while the walk unwinds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def describe(self) -> str:
        return f"cannot encode obj{''.join(reversed(self.path))}: {self.reason}"


class _Encoder:
    """One walk over the object: validates types, swaps arrays for descriptors.

    The walk visits values in the order msgpack will pack them, so each array's
    segment offset is known when its descriptor is made. Containers holding
    only plain scalars are passed to msgpack as they are (a C-speed type check,
    no per-element Python call), so long lists of floats stay cheap.
    """

    __slots__ = ("cursor", "limit", "mode", "raw_total", "segments")

    def __init__(self, mode: Compression, limit: int) -> None:
        self.mode = mode
        self.limit = limit
        self.segments: list[tuple[int, Part]] = []  # (offset, stored bytes) per array
        self.cursor = 0  # end of the last segment, relative to the data region
        self.raw_total = 0

    def value(self, obj: Any, depth: int) -> Any:
        kind = type(obj)
        if kind in _SCALARS:
            return obj
        if kind is dict:
            return self.mapping(obj, depth)
        if kind is list or kind is tuple:
            return self.sequence(obj, depth)
        if kind is np.ndarray:
            return self.array(obj)
        return self.other(obj, depth)

    def mapping(self, obj: dict[Any, Any], depth: int) -> dict[Any, Any]:
        if not set(map(type, obj)) <= _KEYS:
            obj = {_key(k): v for k, v in obj.items()}
        if set(map(type, obj.values())) <= _SCALARS:
            return obj
        depth = _deeper(depth)
        out: dict[Any, Any] = {}
        for key, item in obj.items():
            try:
                out[key] = self.value(item, depth)
            except _EncodeError as exc:
                exc.path.append(f"[{key!r}]")
                raise
        return out

    def sequence(self, obj: list[Any] | tuple[Any, ...], depth: int) -> list[Any] | tuple[Any, ...]:
        if set(map(type, obj)) <= _SCALARS:
            return obj
        depth = _deeper(depth)
        out: list[Any] = []
        for index, item in enumerate(obj):
            try:
                out.append(self.value(item, depth))
            except _EncodeError as exc:
                exc.path.append(f"[{index}]")
                raise
        return out

    def array(self, arr: npt.NDArray[Any]) -> msgpack.ExtType:
        self.raw_total += arr.nbytes
        _check_size("array data", self.raw_total, self.limit)
        try:
            enc = encode_array(arr, self.mode)
        except CodecError as exc:
            raise _EncodeError(str(exc)) from None
        offset = align(self.cursor)
        stored = len(enc.data)
        self.segments.append((offset, enc.data))
        self.cursor = offset + stored
        _check_size("message", self.cursor, self.limit)
        desc = pack_descriptor(enc.dtype, enc.shape, enc.codec, offset, stored)
        return msgpack.ExtType(ARRAY_EXT, desc)

    def other(self, obj: object, depth: int) -> Any:
        """Everything that is not an exact builtin type or a plain ndarray."""
        if isinstance(obj, np.generic):
            if isinstance(obj, (np.str_, np.bytes_)):
                return obj.item()
            return self.array(np.asarray(obj))
        if isinstance(obj, np.ndarray):
            if isinstance(obj, np.ma.MaskedArray):
                raise _EncodeError("masked arrays are not supported; send .filled() and the mask")
            return self.array(np.asarray(obj))
        if isinstance(obj, (str, int, float, bytes)):
            return obj  # subclasses such as IntEnum: msgpack packs the base value
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        if isinstance(obj, dict):
            return self.mapping(dict(obj), depth)
        if isinstance(obj, (list, tuple)):
            return self.sequence(list(obj), depth)
        kind = type(obj)
        raise _EncodeError(
            f"unsupported type {kind.__module__}.{kind.__qualname__}; supported: {_SUPPORTED}"
        )


def _key(key: object) -> str | int:
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return int(key)
    raise _EncodeError(
        f"dict key {key!r} has type {type(key).__qualname__}; keys must be str or int"
    )


def _deeper(depth: int) -> int:
    if depth >= _MAX_DEPTH:
        raise _EncodeError(f"nested more than {_MAX_DEPTH} levels deep (or a reference cycle)")
    return depth + 1


def _pack_header(tree: Any) -> bytes:
    try:
        header = cast(bytes, msgpack.packb(tree, use_bin_type=True))
    except OverflowError:
        raise CodecError(
            "cannot encode an int outside -2**63 .. 2**64-1 (msgpack's range); send it as a str"
        ) from None
    except (ValueError, TypeError) as exc:
        raise CodecError(f"cannot encode: {exc}") from exc
    if len(header) > _MAX_HEADER:
        raise CodecError(f"header of {len(header)} bytes is over 4 GiB; send big bytes as arrays")
    return header


# --------------------------------------------------------------------------- decode


def loads(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_BYTES,
    buffers: Buffers | None = None,
) -> Any:
    """Decode one message. Raises ``CodecError``, and only that, for any malformed input.

    ``buffers`` (``arrays.Buffers``) hands out the memory lz4 arrays decompress
    into, instead of fresh allocations (the policy worker's reused pool).
    """
    limit = _check_limit(max_size)
    view = _byte_view(data)
    _check_size("message", view.nbytes, limit)
    base: Any = data if isinstance(data, (bytes, bytearray)) else view
    try:
        return _decode(base, view, limit, buffers)
    except CodecError:
        raise
    except Exception as exc:  # the contract: malformed input raises CodecError only
        raise CodecError(f"malformed message: {type(exc).__name__}: {exc}") from exc


def _byte_view(data: object) -> memoryview:
    """A flat, contiguous byte view of ``data``, or CodecError."""
    if isinstance(data, (bytes, bytearray)):
        return memoryview(data)
    if not isinstance(data, memoryview):
        kind = type(data).__qualname__
        raise CodecError(f"loads() takes bytes, bytearray or memoryview, not {kind}")
    try:
        if data.ndim == 1 and data.format == "B" and data.contiguous:
            return data
        return np.frombuffer(data, np.uint8).data
    except (ValueError, TypeError, BufferError) as exc:
        raise CodecError(f"loads() needs a contiguous buffer: {exc}") from exc


def _decode(base: Any, view: memoryview, limit: int, buffers: Buffers | None = None) -> Any:
    size = view.nbytes
    if size < _PRELUDE.size:
        raise CodecError(f"truncated message: {size} bytes, the prelude alone is {_PRELUDE.size}")
    magic, version, header_len = _PRELUDE.unpack_from(view)
    if magic != MAGIC:
        raise CodecError(
            f"not an arena-eval message: starts with {bytes(view[:4])!r}, expected {MAGIC!r}"
        )
    if version != SCHEMA_VERSION:
        raise CodecError(_version_mismatch(version))
    head_end = _PRELUDE.size + header_len
    if head_end > size:
        raise CodecError(f"truncated message: the header needs {head_end} bytes, got {size}")
    header = view[_PRELUDE.size : head_end]
    reader = _ArrayReader(base, view, align(head_end), limit, buffers)
    try:
        obj = msgpack.unpackb(
            header,
            ext_hook=reader,
            raw=False,
            strict_map_key=False,
            max_str_len=header_len,
            max_bin_len=header_len,
            max_array_len=header_len,
            max_map_len=header_len // 2,
            max_ext_len=header_len,
        )
    except (ValueError, TypeError) as exc:
        raise CodecError(f"corrupt header: {type(exc).__name__}: {exc}") from exc
    reader.finish(head_end)
    if _TIMESTAMP.search(header) is not None and _has_timestamp(obj):
        raise CodecError(
            "unknown msgpack extension type -1 (timestamp); this codec never writes it"
        )
    return obj


def _version_mismatch(version: int) -> str:
    if version > SCHEMA_VERSION:
        hint = "the sender runs a newer arena-eval; upgrade this process"
    else:
        hint = "the sender runs an older arena-eval; upgrade the sender"
    return (
        f"message has schema version {version}, expected {SCHEMA_VERSION}; {hint} "
        "(every process of a deployment must run the same arena-eval release)"
    )


class _ArrayReader:
    """msgpack ``ext_hook``: turns each descriptor into an array view of the message.

    msgpack calls it in wire order, so it checks that segments are laid out
    exactly as ``dumps`` lays them out: in order, aligned, zero-padded, within
    the message, and that the message ends with the last one.
    """

    __slots__ = ("base", "buffers", "count", "cursor", "data_start", "inflated", "limit", "view")

    def __init__(
        self,
        base: Any,
        view: memoryview,
        data_start: int,
        limit: int,
        buffers: Buffers | None = None,
    ) -> None:
        self.base = base
        self.buffers = buffers
        self.view = view
        self.data_start = data_start
        self.limit = limit
        self.cursor = 0  # end of the last segment, relative to data_start
        self.count = 0
        self.inflated = 0  # decompressed bytes so far

    def __call__(self, code: int, payload: bytes) -> npt.NDArray[Any]:
        if code != ARRAY_EXT:
            raise CodecError(
                f"unknown msgpack extension type {code}; this codec only writes {ARRAY_EXT} (array)"
            )
        desc = parse_descriptor(payload)
        offset = align(self.cursor)
        if desc.offset != offset:
            raise CodecError(
                f"corrupt array descriptor: array #{self.count} at offset {desc.offset}, "
                f"expected {offset}"
            )
        end = self.data_start + offset + desc.stored
        if end > self.view.nbytes:
            raise CodecError(
                f"truncated message: array #{self.count} ends at byte {end}, "
                f"the message has {self.view.nbytes}"
            )
        self._check_zeros(self.data_start + self.cursor, self.data_start + offset)
        if desc.codec == LZ4:
            self.inflated += desc.raw
            _check_size("decompressed array data", self.inflated, self.limit)
        arr: npt.NDArray[Any] = read_array(
            desc, self.base, self.view, self.data_start + offset, self.buffers
        )
        self.cursor = offset + desc.stored
        self.count += 1
        return arr

    def finish(self, head_end: int) -> None:
        """Check the bytes the descriptors did not account for."""
        end = self.data_start + self.cursor if self.count else head_end
        if self.count:
            self._check_zeros(head_end, self.data_start)
        if self.view.nbytes != end:
            raise CodecError(f"corrupt message: {self.view.nbytes - end} unexpected trailing bytes")

    def _check_zeros(self, start: int, stop: int) -> None:
        if start != stop and self.view[start:stop].tobytes() != padding(stop - start):
            raise CodecError(f"corrupt message: non-zero padding in bytes {start}..{stop}")


def _has_timestamp(obj: Any) -> bool:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            return True
        if type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
    return False


# --------------------------------------------------------------------------- arguments


def _check_mode(compression: Compression | str) -> Compression:
    if type(compression) is Compression:
        return compression
    try:
        return Compression(compression)
    except ValueError:
        choices = ", ".join(repr(c.value) for c in Compression)
        raise ConfigError(f"unknown compression {compression!r}; use one of {choices}") from None


def _check_limit(max_size: int) -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0:
        raise ConfigError(f"max_size must be a positive int (bytes), got {max_size!r}")
    return max_size


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise CodecError(
            f"{what} is {size} bytes ({size / 2**20:.1f} MiB), over max_size={limit} "
            f"({limit / 2**20:.1f} MiB); send fewer rows per request or raise max_size"
        )

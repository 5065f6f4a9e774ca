"""Array packing for the message codec: dtype whitelist, descriptors and per-array lz4.

``broker/codec.py`` frames a message; this module decides how each numpy array
travels inside it. It is split out because the rules here are the ones a reader
of the wire format needs most, and they are easier to audit on their own.

Why these rules:

* **Whitelist of dtypes, never pickle.** Only bool and the fixed-size numeric
  dtypes cross the wire. Object arrays would need pickle, and unpickling runs
  arbitrary code chosen by the sender; string, void (structured) and datetime
  arrays have no unambiguous, portable byte layout worth supporting here.
* **Little-endian, C order on the wire.** The receiver can then wrap the bytes
  with ``np.frombuffer`` and hand them to torch without a byteswap or a copy
  (``torch.from_numpy`` rejects non-native byte order). Big-endian or
  non-contiguous inputs pay one copy on the sending side instead.
* **A fixed binary descriptor** (not a nested msgpack map) for each array: it
  is parsed with one ``struct.unpack_from``, has exactly one valid length for
  a given ``ndim`` and leaves nothing to interpret, which makes validation of
  hostile input short and complete.
* **lz4 block, per array, only where it pays.** Rendered frames (flat regions,
  gradients) shrink 3-5x at several GB/s; camera noise and float state do
  not compress at all. ``AUTO`` therefore test-compresses a few small samples
  first (microseconds) and keeps the raw bytes, which decode with zero copies,
  unless the saving is real. lz4.block and lz4.frame were measured on the
  GR1 frames (``benchmarks/codec_throughput.py``): same ratio and speed, but
  block has no framing to parse and the sizes are in the descriptor already.
  Arrays are compressed in independent LZ4_CHUNK blocks; see its comment.

Descriptor layout (payload of msgpack ExtType ``ARRAY_EXT``), little-endian::

    u8 codec | u8 ndim | 4s dtype | u64 offset | u64 stored | u64 raw | ndim x u64 dims

``dtype`` is the numpy dtype string (``'<f4'``, ``'|u1'``) NUL-padded to 4
bytes; ``offset`` is relative to the start of the data region; ``stored`` is
the number of bytes of the segment and ``raw`` the number of array bytes.
A RAW segment is the array bytes. An LZ4 segment is ``ceil(raw / LZ4_CHUNK)``
u32 compressed sizes followed by that many lz4 blocks, each decompressing to
LZ4_CHUNK bytes (the last to the remainder).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import lz4.block
import numpy as np
import numpy.typing as npt

from arena_eval.broker import lz4_into
from arena_eval.broker.errors import CodecError

__all__ = [
    "ALIGN",
    "ARRAY_EXT",
    "AUTO_MIN_BYTES",
    "LZ4",
    "LZ4_CHUNK",
    "MAX_NDIM",
    "MIN_RATIO",
    "RAW",
    "Buffers",
    "Compression",
    "Descriptor",
    "Encoded",
    "align",
    "encode_array",
    "pack_descriptor",
    "padding",
    "parse_descriptor",
    "read_array",
    "wire_dtype",
]


class Compression(str, enum.Enum):
    """Per-array lz4 policy. ``AUTO`` is the right choice unless you are measuring."""

    OFF = "off"  #: never compress; every array decodes with zero copies
    AUTO = "auto"  #: compress arrays >= AUTO_MIN_BYTES that shrink by >= MIN_RATIO
    ALWAYS = "always"  #: compress every array, even when it grows (tests, benchmarks)


#: msgpack extension type code of an array descriptor; any other code is an error.
ARRAY_EXT = 1
#: Codec ids stored in the descriptor.
RAW, LZ4 = 0, 1
#: Every array segment starts at a multiple of this, relative to the message start.
ALIGN = 64
#: AUTO leaves arrays smaller than this raw: the lz4 call would cost more than it saves.
AUTO_MIN_BYTES = 64 * 1024
#: AUTO keeps compressed bytes only if raw / compressed >= this.
MIN_RATIO = 1.1
#: AUTO samples this many chunks of _SAMPLE_BYTES, spread over the array.
_SAMPLE_CHUNKS = 4
_SAMPLE_BYTES = 16 * 1024
#: lz4 segments are independent blocks of this many raw bytes (the last may be
#: shorter). One block per 8 MB array made python-lz4 allocate two fresh 8 MB
#: buffers per decode (~3800 page faults, 4-6x slower); 256 KiB blocks keep its
#: temporaries in L2 cache and in malloc's reused heap, at no cost in ratio.
LZ4_CHUNK = 256 * 1024
#: lz4 cannot expand data more than ~255x; a descriptor claiming more is corrupt.
_LZ4_MAX_RATIO = 255
#: numpy 1.x allows 32 dimensions (2.x allows 64); 32 keeps both sides compatible.
MAX_NDIM = 32
_MAX_INTP = 2**63 - 1

_WIRE_STRS = (
    "|b1",
    "|i1",
    "|u1",
    "<i2",
    "<u2",
    "<i4",
    "<u4",
    "<i8",
    "<u8",
    "<f2",
    "<f4",
    "<f8",
    "<c8",
    "<c16",
)
#: NUL-padded dtype code as it appears in a descriptor -> dtype.
_WIRE_BY_CODE: dict[bytes, np.dtype[Any]] = {
    s.encode("ascii").ljust(4, b"\0"): np.dtype(s) for s in _WIRE_STRS
}
#: Any accepted input dtype (either byte order) -> its little-endian wire dtype.
_TO_WIRE: dict[np.dtype[Any], np.dtype[Any]] = {}
for _dt in _WIRE_BY_CODE.values():
    _TO_WIRE[_dt] = _dt
    _TO_WIRE[_dt.newbyteorder(">")] = _dt
del _dt

_DESC = struct.Struct("<BB4sQQQ")
_ZEROS = bytes(ALIGN)


#: Hands out ``n`` writable bytes (a flat uint8 array) for one decompressed array;
#: the policy worker's ``DecodeBuffers`` reuses them instead of allocating fresh memory.
Buffers = Callable[[int], "npt.NDArray[np.uint8]"]


class Descriptor(NamedTuple):
    """One validated array descriptor."""

    codec: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    stored: int
    raw: int


def align(n: int) -> int:
    """Round ``n`` up to the next multiple of ALIGN."""
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def padding(n: int) -> bytes:
    """``n`` (< ALIGN) zero bytes."""
    return _ZEROS[:n]


def wire_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The little-endian dtype an array of ``dtype`` travels as, or CodecError saying why not."""
    wire = _TO_WIRE.get(dtype)
    if wire is not None:
        return wire
    kind = dtype.kind
    if kind == "O":
        why = "object arrays are never sent (that would need pickle, which runs code on load)"
    elif kind in "US":
        why = "string arrays are not supported; send a list of str instead"
    elif kind == "V":
        why = "structured/void arrays are not supported; send one array per field"
    elif kind in "Mm":
        why = "datetime arrays are not supported; send arr.astype('int64') and the unit"
    elif kind in "fc":
        why = "extended precision is not supported; cast to float64/complex128"
    else:
        why = "only bool and fixed-size int/uint/float/complex dtypes are supported"
    raise CodecError(f"arrays of dtype {dtype.str!r} cannot be sent: {why}")


class Encoded(NamedTuple):
    """How one array travels: wire dtype, shape, codec and the stored segment bytes."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    codec: int
    data: bytes | memoryview


def encode_array(arr: npt.NDArray[Any], mode: Compression) -> Encoded:
    """Wire form of ``arr``.

    The stored bytes are a memoryview of ``arr`` itself when it is already
    little-endian and C-contiguous and stays uncompressed; otherwise they are
    a converted copy or the lz4 chunk table and blocks.
    """
    wire = wire_dtype(arr.dtype)
    shape = arr.shape
    if arr.dtype != wire:
        arr = arr.astype(wire, order="C")  # byteswap: one copy, on the sender
    elif not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    view = arr.reshape(-1).view(np.uint8).data
    n = view.nbytes
    if mode is Compression.OFF or (
        mode is Compression.AUTO and (n < AUTO_MIN_BYTES or not _sample_compresses(view))
    ):
        return Encoded(wire, shape, RAW, view)
    packed = _lz4_chunks(view)
    if mode is Compression.AUTO and len(packed) * MIN_RATIO > n:
        return Encoded(wire, shape, RAW, view)  # the sample was too optimistic
    return Encoded(wire, shape, LZ4, packed)


def _lz4_chunks(view: memoryview) -> bytes:
    """Chunk table (u32 compressed size per chunk) followed by the lz4 blocks.

    Joined into one buffer (a copy of the compressed bytes only) so that a
    message has few parts, whatever the array size: writev() caps iovecs.
    """
    blocks = [
        lz4.block.compress(view[i : i + LZ4_CHUNK], store_size=False)
        for i in range(0, view.nbytes, LZ4_CHUNK)
    ]
    table = struct.pack(f"<{len(blocks)}I", *map(len, blocks))
    return b"".join([table, *blocks])


def _sample_compresses(view: memoryview) -> bool:
    """Cheap guess whether lz4 pays: compress a few chunks spread over the array.

    Sampling several places, not only the start, keeps a flat top row (sky,
    a wall) from selling a noisy image as compressible, and vice versa.
    """
    step = view.nbytes // _SAMPLE_CHUNKS  # >= _SAMPLE_BYTES since n >= AUTO_MIN_BYTES
    packed = 0
    for i in range(_SAMPLE_CHUNKS):
        start = i * step
        chunk = view[start : start + _SAMPLE_BYTES]
        packed += len(lz4.block.compress(chunk, store_size=False))
    return packed * MIN_RATIO <= _SAMPLE_CHUNKS * _SAMPLE_BYTES


def pack_descriptor(
    dtype: np.dtype[Any], shape: tuple[int, ...], codec: int, offset: int, stored: int
) -> bytes:
    """Binary descriptor for one array segment (see the module docstring)."""
    raw = math.prod(shape) * dtype.itemsize
    head = _DESC.pack(codec, len(shape), dtype.str.encode("ascii"), offset, stored, raw)
    return head + struct.pack(f"<{len(shape)}Q", *shape)


def parse_descriptor(payload: bytes) -> Descriptor:
    """Decode and fully validate one descriptor; CodecError on anything inconsistent."""
    if len(payload) < _DESC.size:
        raise _bad(f"{len(payload)} bytes, need at least {_DESC.size}")
    codec, ndim, code, offset, stored, raw = _DESC.unpack_from(payload)
    if ndim > MAX_NDIM:
        raise _bad(f"ndim {ndim} > {MAX_NDIM}")
    if len(payload) != _DESC.size + 8 * ndim:
        raise _bad(f"{len(payload)} bytes for ndim {ndim}, expected {_DESC.size + 8 * ndim}")
    dtype = _WIRE_BY_CODE.get(code)
    if dtype is None:
        raise _bad(f"dtype {code!r} is not an allowed wire dtype")
    if codec not in (RAW, LZ4):
        raise _bad(f"unknown codec id {codec}")
    shape: tuple[int, ...] = struct.unpack_from(f"<{ndim}Q", payload, _DESC.size)
    _check_shape(shape, dtype, raw)
    if codec == RAW and stored != raw:
        raise _bad(f"raw array stores {stored} bytes but holds {raw}")
    if codec == LZ4 and raw > _LZ4_MAX_RATIO * stored + ALIGN:
        raise _bad(f"lz4 cannot expand {stored} bytes to {raw}")
    return Descriptor(codec, dtype, shape, offset, stored, raw)


def _check_shape(shape: tuple[int, ...], dtype: np.dtype[Any], raw: int) -> None:
    # Python ints cannot overflow; the bound on non-zero dims keeps numpy's own
    # size arithmetic (intp) valid even for empty arrays with huge other dims.
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > _MAX_INTP:
        raise _bad(f"shape {shape} is too large for numpy")
    if math.prod(shape) * dtype.itemsize != raw:
        need = math.prod(shape) * dtype.itemsize
        raise _bad(f"shape {shape} of {dtype.str} needs {need} bytes, not {raw}")


def read_array(
    desc: Descriptor, data: Any, view: memoryview, start: int, buffers: Buffers | None = None
) -> npt.NDArray[Any]:
    """The array of ``desc`` whose stored bytes begin at ``start`` in ``data``.

    ``data`` is the caller's buffer object (kept as the array's base so the
    memory stays alive), ``view`` a flat byte view of it. Raw arrays are views
    into ``data`` (zero copy); lz4 arrays own freshly decompressed memory --
    or, with ``buffers``, memory it hands out (``Buffers``) -- and are made
    read-only too, so that consumers see one behaviour.
    """
    if desc.codec == RAW:
        count = desc.raw // desc.dtype.itemsize
        arr: npt.NDArray[Any] = np.frombuffer(data, desc.dtype, count, start)
        return arr.reshape(desc.shape)
    if buffers is not None and lz4_into.available():
        raw = _inflate_into(desc, view, start, buffers(desc.raw))
    else:
        raw = _inflate(desc, view, start)
    arr = raw.view(desc.dtype).reshape(desc.shape)
    arr.flags.writeable = False
    return arr


def _chunk_sizes(desc: Descriptor, view: memoryview, start: int) -> tuple[int, ...]:
    """The validated chunk table of one lz4 segment."""
    count = -(-desc.raw // LZ4_CHUNK)
    table = 4 * count
    if desc.stored < table:
        raise CodecError(f"corrupt lz4 data: {desc.stored} bytes cannot hold {count} chunk sizes")
    sizes: tuple[int, ...] = struct.unpack_from(f"<{count}I", view, start)
    if table + sum(sizes) != desc.stored:
        raise CodecError(
            f"corrupt lz4 data: chunk sizes add up to {table + sum(sizes)}, "
            f"segment holds {desc.stored}"
        )
    return sizes


def _inflate_into(
    desc: Descriptor, view: memoryview, start: int, out: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """Decompress one lz4 segment straight into ``out`` (``desc.raw`` bytes), no temporaries."""
    if out.dtype != np.uint8 or out.ndim != 1 or out.nbytes != desc.raw or not out.flags.writeable:
        raise ValueError(f"a buffer must be a writable flat uint8 array of {desc.raw} bytes")
    sizes = _chunk_sizes(desc, view, start)
    src_base = np.frombuffer(view, np.uint8).ctypes.data  # the address; no copy
    dst_base = out.ctypes.data
    pos, src = 0, start + 4 * len(sizes)
    for size in sizes:
        n = min(LZ4_CHUNK, desc.raw - pos)
        got = lz4_into.decompress_into(src_base + src, size, dst_base + pos, n)
        if got != n:
            why = "corrupt block" if got < 0 else f"chunk gave {got} bytes, expected {n}"
            raise CodecError(f"corrupt lz4 data in chunk at byte {src}: {why}")
        pos, src = pos + n, src + size
    return out


def _inflate(desc: Descriptor, view: memoryview, start: int) -> npt.NDArray[np.uint8]:
    """Decompress the chunks of one lz4 segment straight into a new array."""
    sizes = _chunk_sizes(desc, view, start)
    out = np.empty(desc.raw, np.uint8)
    dst = out.data
    pos, src = 0, start + 4 * len(sizes)
    for size in sizes:
        n = min(LZ4_CHUNK, desc.raw - pos)
        try:
            block = lz4.block.decompress(view[src : src + size], uncompressed_size=n)
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(f"corrupt lz4 data in chunk at byte {src}: {exc}") from exc
        if len(block) != n:
            raise CodecError(f"corrupt lz4 data: chunk gave {len(block)} bytes, expected {n}")
        dst[pos : pos + n] = block
        pos, src = pos + n, src + size
    return out


def _bad(reason: str) -> CodecError:
    return CodecError(f"corrupt array descriptor: {reason}")

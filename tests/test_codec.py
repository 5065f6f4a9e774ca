"""Round trips, zero-copy guarantees, compression policy and error messages of the codec.

No Redis needed: the codec is pure bytes in, bytes out.
"""

from __future__ import annotations

import enum
import math
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from arena_eval.benchmarks.codec_throughput import rendered_scene
from arena_eval.broker import CodecError
from arena_eval.broker.arrays import ARRAY_EXT, AUTO_MIN_BYTES, LZ4, RAW, parse_descriptor
from arena_eval.broker.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAGIC,
    SCHEMA_VERSION,
    Compression,
    dumps,
    dumps_parts,
    loads,
)
from arena_eval.broker.errors import ConfigError

NUMERIC = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]
MODES = ["off", "auto", "always"]
ORDERS = ["<", ">"]


# --------------------------------------------------------------------------- helpers


def same(a: Any, b: Any) -> bool:
    """Deep equality after a round trip: tuples become lists, arrays compare by value+dtype."""
    if isinstance(a, (np.ndarray, np.generic)):
        a = np.asarray(a)
        if not isinstance(b, np.ndarray) or a.shape != b.shape:
            return False
        if a.dtype.newbyteorder("<") != b.dtype:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return type(b) is list and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def roundtrip(obj: Any, **kw: Any) -> Any:
    return loads(dumps(obj, **kw))


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return (rng.standard_normal(shape) * 100).astype(dt)


def descriptors(msg: bytes) -> list[Any]:
    """Parsed array descriptors of a message, in wire order."""
    (header_len,) = struct.unpack_from("<I", msg, 4)
    found: list[Any] = []

    def hook(code: int, payload: bytes) -> None:
        found.append(parse_descriptor(payload))

    msgpack.unpackb(msg[8 : 8 + header_len], ext_hook=hook, strict_map_key=False)
    return found


def frame(header: bytes, body: bytes = b"", version: int = SCHEMA_VERSION) -> bytes:
    """A message with an arbitrary header (and data region), for malformed-input tests."""
    head = MAGIC + bytes([version]) + struct.pack("<I", len(header)) + header
    if not body:
        return head
    pad = -len(head) % 64
    return head + bytes(pad) + body


def descriptor(
    dtype: bytes = b"<f4",
    shape: tuple[int, ...] = (2,),
    codec: int = RAW,
    offset: int = 0,
    stored: int | None = None,
    raw: int | None = None,
    ndim: int | None = None,
) -> bytes:
    itemsize = np.dtype(dtype.decode()).itemsize if dtype[:1] in b"<|" else 4
    raw = math.prod(shape) * itemsize if raw is None else raw
    stored = raw if stored is None else stored
    ndim = len(shape) if ndim is None else ndim
    head = struct.pack("<BB4sQQQ", codec, ndim, dtype.ljust(4, b"\0"), offset, stored, raw)
    return head + struct.pack(f"<{len(shape)}Q", *shape)


def one_array(desc: bytes, body: bytes, code: int = ARRAY_EXT) -> bytes:
    return frame(msgpack.packb({"a": msgpack.ExtType(code, desc)}), body)


def gr1_payload(images: np.ndarray | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    if images is None:
        images = rng.integers(0, 256, (10, 512, 512, 3), dtype=np.uint8)
    return {
        "robot_pov_cam_rgb": images,
        "joint_pos": rng.standard_normal((10, 54)).astype(np.float32),
        "instruction": "pick up the red cube and place it in the bowl",
    }


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_dtype_and_byte_order(dtype: str, order: str, mode: str) -> None:
    dt = np.dtype(dtype).newbyteorder(order)
    for shape in [(), (0,), (7,), (3, 4), (2, 0, 3), (2, 3, 1, 2)]:
        arr = sample(dtype, shape).astype(dt)
        out = roundtrip({"x": arr}, compression=mode)["x"]
        assert same(arr, out), (dtype, order, shape)
        assert out.dtype.byteorder in "<|=" and out.flags.c_contiguous


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_fortran_and_views(mode: str) -> None:
    base = sample("float64", (40, 30), seed=1)
    cases = [base[::2, ::3], base.T, np.asfortranarray(base), base[5], base[:, 7], base[::-1]]
    for arr in cases:
        out = roundtrip([arr], compression=mode)[0]
        assert same(arr, out) and out.flags.c_contiguous


def test_big_array_every_mode_round_trips() -> None:
    arr = np.tile(np.arange(1000, dtype=np.int32), 300).reshape(300, 1000)
    for mode in MODES:
        assert same(arr, roundtrip(arr, compression=mode))


def test_nested_structures_and_scalars() -> None:
    obj = {
        "s": "héllo ✓",
        "i": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "f": [0.0, -1.5, float("inf"), float("nan"), 1e300],
        "b": [True, False, None],
        "bytes": b"\x00\xff" * 10,
        "tuple": (1, (2, [3, {"deep": (4,)}])),
        7: {"int key": True, -3: "neg"},
        "empty": [{}, [], (), "", b""],
        "arrays": [np.arange(3), {"z": np.zeros((2, 2), np.float16)}],
    }
    out = roundtrip(obj)
    assert same(obj, out)
    assert out["tuple"] == [1, [2, [3, {"deep": [4]}]]]
    assert out["b"][0] is True and type(out["i"][0]) is int


@pytest.mark.parametrize("obj", [None, 0, "x", b"", [], {}, 1.25, True])
def test_plain_top_level_values(obj: Any) -> None:
    assert same(obj, roundtrip(obj))


def test_numpy_scalars_become_zero_d_arrays() -> None:
    out = roundtrip([np.float32(1.5), np.int64(-3), np.float64(2.0), np.bool_(True), np.uint8(9)])
    for value, dtype in zip(out, ["<f4", "<i8", "<f8", "|b1", "|u1"], strict=True):
        assert isinstance(value, np.ndarray) and value.shape == () and value.dtype == dtype
    assert float(out[0]) == 1.5 and int(out[1]) == -3
    assert roundtrip([np.str_("hi"), np.bytes_(b"x")]) == ["hi", b"x"]


def test_subclasses_of_builtins() -> None:
    class Color(enum.IntEnum):
        RED = 1

    out = roundtrip({Color.RED: Color.RED, "mode": Compression.AUTO, "ba": bytearray(b"ab")})
    assert out == {1: 1, "mode": "auto", "ba": b"ab"}
    assert roundtrip(memoryview(b"xyz")) == b"xyz"


def test_deep_nesting_limit() -> None:
    ok: Any = [1]
    for _ in range(200):
        ok = [ok]
    assert roundtrip(ok) == ok
    too_deep: Any = []
    for _ in range(300):
        too_deep = [too_deep, np.zeros(1)]
    with pytest.raises(CodecError, match="nested more than"):
        dumps(too_deep)
    cycle: list[Any] = [np.zeros(1)]
    cycle.append(cycle)
    with pytest.raises(CodecError, match="reference cycle"):
        dumps(cycle)


# --------------------------------------------------------------------------- GR1 payload, zero copy


def base_chain_reaches(arr: np.ndarray, target: object) -> bool:
    obj: Any = arr
    while obj is not None:
        if obj is target:
            return True
        obj = getattr(obj, "base", None) if not isinstance(obj, memoryview) else obj.obj
    return False


def test_gr1_payload_round_trip_is_zero_copy() -> None:
    payload = gr1_payload()
    msg = dumps(payload, compression="off")
    assert len(msg) < sum(a.nbytes for a in payload.values() if isinstance(a, np.ndarray)) + 512
    out = loads(msg)
    assert same(payload, out)
    img = out["robot_pov_cam_rgb"]
    assert np.shares_memory(img, np.frombuffer(msg, np.uint8))
    assert base_chain_reaches(img, msg)
    assert not img.flags.writeable  # a view of immutable bytes
    assert img.flags.aligned and out["joint_pos"].flags.aligned


def test_gr1_auto_skips_noise_images_so_decoding_stays_zero_copy() -> None:
    payload = gr1_payload()
    msg = dumps(payload)  # auto
    assert [d.codec for d in descriptors(msg)] == [RAW, RAW]
    assert np.shares_memory(loads(msg)["robot_pov_cam_rgb"], np.frombuffer(msg, np.uint8))


def test_writable_and_sliced_input_buffers() -> None:
    payload = gr1_payload()
    msg = dumps(payload, compression="off")
    buf = bytearray(msg)
    out = loads(buf)
    assert out["robot_pov_cam_rgb"].flags.writeable
    assert np.shares_memory(out["robot_pov_cam_rgb"], np.frombuffer(buf, np.uint8))
    big = bytearray(b"\x01" * 13) + buf + bytearray(b"\x02" * 5)
    view = memoryview(big)[13 : 13 + len(msg)]
    assert same(payload, loads(view))
    two_d = memoryview(bytearray(msg)).cast("B", (1, len(msg)))
    assert same(payload, loads(two_d))


def test_decoded_arrays_are_aligned_for_every_dtype() -> None:
    obj = {d: sample(d, (3, 5)) for d in NUMERIC}
    out = loads(dumps(obj, compression="off"))
    for d in NUMERIC:
        assert out[d].flags.aligned, d


# --------------------------------------------------------------------------- dumps_parts


def test_dumps_parts_concatenates_to_dumps_and_references_the_arrays() -> None:
    payload = gr1_payload()
    for mode in MODES:
        parts, total = dumps_parts(payload, compression=mode)
        msg = b"".join(parts)
        assert msg == dumps(payload, compression=mode)
        assert total == len(msg) == sum(len(p) for p in parts)
    parts, _ = dumps_parts(payload, compression="off")
    image_parts = [p for p in parts if len(p) == payload["robot_pov_cam_rgb"].nbytes]
    assert len(image_parts) == 1 and isinstance(image_parts[0], memoryview)
    assert np.shares_memory(np.frombuffer(image_parts[0], np.uint8), payload["robot_pov_cam_rgb"])
    joint = [p for p in parts if len(p) == payload["joint_pos"].nbytes]
    assert np.shares_memory(np.frombuffer(joint[0], np.uint8), payload["joint_pos"])


def test_dumps_parts_copies_only_what_it_must() -> None:
    arr = sample("float32", (64, 64))
    for converted in (arr[:, ::2], arr.astype(">f4"), np.asfortranarray(arr)):
        parts, _ = dumps_parts(converted, compression="off")
        assert not any(np.shares_memory(np.frombuffer(p, np.uint8), converted) for p in parts)
        assert same(converted, loads(b"".join(parts)))


def test_dumps_parts_without_arrays_is_one_part() -> None:
    parts, total = dumps_parts({"a": [1, 2]})
    assert len(parts) == 1 and total == len(parts[0])


# --------------------------------------------------------------------------- compression policy


def test_auto_skips_noise_and_small_arrays_but_compresses_a_rendered_scene() -> None:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    frames = np.stack([rendered_scene(rng) for _ in range(2)])
    small = np.zeros(AUTO_MIN_BYTES // 2, np.uint8)
    msg = dumps({"noise": noise, "scene": frames, "small": small}, compression="auto")
    codecs = [d.codec for d in descriptors(msg)]
    assert codecs == [RAW, LZ4, RAW]
    scene_desc = descriptors(msg)[1]
    assert scene_desc.stored * 2 < scene_desc.raw  # a real saving, not a marginal one
    out = loads(msg)
    assert same(frames, out["scene"]) and same(noise, out["noise"])


def test_auto_keeps_raw_when_compression_does_not_pay() -> None:
    # Compressible samples at the spread-out probe points, noise everywhere else:
    # the sample says yes, the full result must still be checked and rejected.
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    for i in range(4):
        arr[i * (1 << 18) : i * (1 << 18) + 16384] = 0
    assert [d.codec for d in descriptors(dumps(arr))] == [RAW]


def test_lz4_segments_are_chunked_and_checked() -> None:
    arr = np.arange(700_000, dtype=np.int32) // 1000  # 2.8 MB: 11 chunks, the last partial
    msg = dumps(arr, compression="always")
    (desc,) = descriptors(msg)
    assert desc.codec == LZ4 and desc.raw == arr.nbytes
    out = loads(msg)
    assert same(arr, out) and not out.flags.writeable  # read-only, like raw views
    start = len(msg) - desc.stored  # the only segment ends the message
    (first,) = struct.unpack_from("<I", msg, start)
    bad = bytearray(msg)
    struct.pack_into("<I", bad, start, first + 1)
    with pytest.raises(CodecError, match="chunk sizes add up"):
        loads(bytes(bad))


def test_off_never_and_always_always_compresses() -> None:
    zeros = np.zeros((256, 1024), np.uint8)
    tiny = np.arange(5, dtype=np.int16)
    empty = np.zeros((0, 3), np.float32)
    assert {d.codec for d in descriptors(dumps([zeros, tiny, empty], compression="off"))} == {RAW}
    msg = dumps([zeros, tiny, empty], compression=Compression.ALWAYS)
    assert [d.codec for d in descriptors(msg)] == [LZ4, LZ4, LZ4]
    assert same([zeros, tiny, empty], loads(msg))


# --------------------------------------------------------------------------- rejected values


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (np.array([1, "a"], dtype=object), "pickle"),
        (np.array(["ab"]), "string arrays"),
        (np.array([b"ab"]), "string arrays"),
        (np.zeros(2, dtype=[("a", "<i4")]), "structured"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime"),
        (np.array([1], dtype="timedelta64[s]"), "datetime"),
        (np.datetime64("2020"), "datetime"),
        ({1, 2}, "builtins.set"),
        (object(), "builtins.object"),
        (1j, "builtins.complex"),
        (np.ma.masked_array([1, 2], mask=[0, 1]), "masked"),
        (2**64, "2\\*\\*64-1"),
        (-(2**63) - 1, "-2\\*\\*63"),
        ("\ud800", "surrogate"),
    ],
)
def test_unsupported_values_raise_codec_error(value: Any, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        dumps({"outer": [0, value]})


def test_error_names_the_path_to_the_bad_value() -> None:
    with pytest.raises(CodecError, match=r"obj\['obs'\]\[2\]\['x'\]: unsupported type .*Path"):
        dumps({"obs": [1, 2, {"x": Path("/")}]})


@pytest.mark.parametrize("key", [(1, 2), None, 1.5, b"k", True, np.int64(1)])
def test_dict_keys_must_be_str_or_int(key: Any) -> None:
    with pytest.raises(CodecError, match="keys must be str or int"):
        dumps({key: 1})


def test_extended_precision_is_rejected() -> None:
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 here")
    with pytest.raises(CodecError, match="extended precision"):
        dumps(np.zeros(2, np.longdouble))


# --------------------------------------------------------------------------- size limits


def test_max_size_on_encode() -> None:
    arr = np.zeros(10_000, np.uint8)
    with pytest.raises(CodecError, match=r"over max_size=5000 .*send fewer rows"):
        dumps(arr, compression="off", max_size=5000)
    with pytest.raises(CodecError, match="over max_size"):
        dumps({"b": b"x" * 6000}, max_size=5000)
    # Compressed arrays count at their decompressed size, like on the decoding side.
    with pytest.raises(CodecError, match="array data is 10000 bytes"):
        dumps(arr, compression="always", max_size=5000)
    assert len(dumps(arr, compression="off", max_size=20_000)) <= 20_000


def test_max_size_on_decode() -> None:
    msg = dumps(np.zeros(10_000, np.uint8), compression="off")
    with pytest.raises(CodecError, match=rf"message is {len(msg)} bytes .*max_size=5000"):
        loads(msg, max_size=5000)
    packed = dumps(np.zeros(10_000, np.uint8), compression="always")
    assert len(packed) < 1000
    with pytest.raises(CodecError, match="decompressed array data is 10000 bytes"):
        loads(packed, max_size=5000)
    assert loads(packed, max_size=10_000).shape == (10_000,)
    assert DEFAULT_MAX_MESSAGE_BYTES == 512 * 1024 * 1024


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_bad_arguments_are_config_errors(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_size"):
        dumps(1, max_size=bad)
    with pytest.raises(ConfigError, match="max_size"):
        loads(dumps(1), max_size=bad)


def test_unknown_compression_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'off', 'auto', 'always'"):
        dumps(1, compression="zstd")


# --------------------------------------------------------------------------- malformed input


def test_wrong_version_says_what_to_do() -> None:
    msg = bytearray(dumps({"a": 1}))
    msg[3] = SCHEMA_VERSION + 1
    with pytest.raises(CodecError, match=r"schema version 2, expected 1; .*upgrade this process"):
        loads(bytes(msg))
    msg[3] = 0
    with pytest.raises(CodecError, match=r"schema version 0, expected 1; .*upgrade the sender"):
        loads(bytes(msg))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "truncated"),
        (b"AEv", "truncated"),
        (b"PK\x03\x04aaaaaaaa", "not an arena-eval message"),
        (b"AEv\x01\xff\xff\xff\xff", "truncated message: the header needs"),
        (frame(b"\xc0") + b"\x00", "trailing"),
        (frame(b"\x92\x01"), "corrupt header"),
        (frame(b"\xc0\xc0"), "corrupt header"),
        (frame(b"\xc1"), "corrupt header"),
        (frame(b"\xa2\xff\xfe"), "corrupt header"),
        (frame(b"\x81\x91\x01\x02"), "malformed|corrupt"),
        (frame(msgpack.packb(msgpack.Timestamp(5))), "timestamp"),
        (frame(msgpack.packb([{"t": msgpack.Timestamp(5, 7)}])), "timestamp"),
        (frame(msgpack.packb(msgpack.ExtType(5, b"abc"))), "unknown msgpack extension type 5"),
        (frame(msgpack.packb(msgpack.ExtType(ARRAY_EXT, b"abc"))), "descriptor"),
    ],
)
def test_malformed_messages(data: bytes, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        loads(data)


@pytest.mark.parametrize("data", ["text", 12, None, [1], np.zeros(3, np.uint8)])
def test_non_bytes_input(data: Any) -> None:
    with pytest.raises(CodecError, match="bytes, bytearray or memoryview"):
        loads(data)


def test_strided_memoryview_is_rejected() -> None:
    with pytest.raises(CodecError, match="contiguous"):
        loads(memoryview(dumps([1, 2]) * 2)[::2])


def test_released_memoryview_is_rejected() -> None:
    view = memoryview(dumps(1))
    view.release()
    with pytest.raises(CodecError):
        loads(view)


BODY = np.arange(2, dtype="<f4").tobytes()
BAD_DESCRIPTORS = [
    (descriptor(b"|O"), BODY, "not an allowed wire dtype"),
    (descriptor(b">f4"), BODY, "not an allowed wire dtype"),
    (descriptor(b"<U1"), BODY, "not an allowed wire dtype"),
    (descriptor(b"<M8"), BODY, "not an allowed wire dtype"),
    (descriptor(codec=7), BODY, "unknown codec id 7"),
    (descriptor(ndim=3), BODY, "for ndim 3"),
    (descriptor(ndim=40, shape=(1,) * 40), BODY, "ndim 40"),
    (descriptor(raw=12), BODY, "needs 8 bytes, not 12"),
    (descriptor(stored=4), BODY, "stores 4 bytes but holds 8"),
    (descriptor(offset=64), BODY, "at offset 64, expected 0"),
    (descriptor(shape=(3,)), BODY, "truncated"),
    (descriptor(shape=(2**62, 2**62, 0), raw=0), b"", "too large"),
    (descriptor(shape=(2**64 - 1,), raw=0), b"", "too large"),
    (descriptor(shape=(0, 5), raw=4), b"", "needs 0 bytes, not 4"),
    (descriptor(codec=LZ4, shape=(250_000,), stored=1), b"\x00", "cannot expand"),
    (descriptor(codec=LZ4, stored=2), b"\x10\x00", "cannot hold 1 chunk sizes"),
    (descriptor(codec=LZ4, stored=8), b"\xff" * 8, "chunk sizes add up to 4294967299"),
    (descriptor(codec=LZ4, stored=8), b"\x04\0\0\0\xff\xff\xff\xff", "corrupt lz4 data in chunk"),
    (descriptor(codec=LZ4, stored=6), b"\x02\0\0\0\x10\x00", "chunk gave 1 bytes, expected 8"),
    (descriptor()[:20], BODY, "20 bytes, need at least 30"),
]


@pytest.mark.parametrize(
    ("desc", "body", "needle"), BAD_DESCRIPTORS, ids=[c[2] for c in BAD_DESCRIPTORS]
)
def test_nonsense_descriptors(desc: bytes, body: bytes, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        loads(one_array(desc, body))


def test_valid_hand_built_descriptor_decodes() -> None:
    assert same(np.arange(2, dtype="<f4"), loads(one_array(descriptor(), BODY))["a"])


def test_padding_must_be_zero() -> None:
    msg = bytearray(dumps([np.arange(3, dtype=np.int8), np.arange(3, dtype=np.int8)]))
    (header_len,) = struct.unpack_from("<I", msg, 4)
    for pos in (8 + header_len, len(msg) - 64):  # header padding, padding between segments
        bad = bytearray(msg)
        bad[pos] = 1
        with pytest.raises(CodecError, match="non-zero padding"):
            loads(bytes(bad))


def test_array_in_a_dict_key_is_rejected() -> None:
    data = frame(msgpack.packb({msgpack.ExtType(ARRAY_EXT, descriptor()): 1}), BODY)
    with pytest.raises(CodecError, match="unhashable"):
        loads(data)


# --------------------------------------------------------------------------- properties

DTYPES = st.sampled_from(NUMERIC).flatmap(
    lambda d: st.sampled_from([np.dtype(d).newbyteorder("<"), np.dtype(d).newbyteorder(">")])
)
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
VALUES = st.recursive(
    SCALARS | ARRAYS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=VALUES, mode=st.sampled_from(MODES))
def test_property_round_trip(obj: Any, mode: str) -> None:
    msg = dumps(obj, compression=mode)
    assert same(obj, loads(msg))
    parts, total = dumps_parts(obj, compression=mode)
    assert b"".join(parts) == msg and total == len(msg)


@settings(max_examples=200, deadline=None)
@given(arr=ARRAYS, view=st.sampled_from(["plain", "strided", "transposed", "reversed"]))
def test_property_arrays_and_views(arr: np.ndarray, view: str) -> None:
    if view == "strided" and arr.ndim:
        arr = arr[..., ::2]
    elif view == "transposed":
        arr = arr.T
    elif view == "reversed" and arr.ndim:
        arr = arr[::-1]
    for mode in MODES:
        out = roundtrip(arr, compression=mode)
        assert same(arr, out)
        assert out.dtype.isnative or out.dtype.byteorder == "|"

"""Fuzzing ``loads``: whatever the input, the only possible failure is ``CodecError``.

Two layers:

* hypothesis feeds arbitrary bytes, arbitrary headers behind a valid prelude
  and arbitrary array descriptors;
* a deterministic, seeded sweep feeds more than 10,000 corrupted versions of
  valid messages (truncations, extensions, bit flips, byte mutations, targeted
  descriptor corruption) plus random byte strings.

Not every corruption *can* be detected, and the tests say so instead of
pretending: the format has no checksum, so a flipped bit inside raw array bytes
yields a valid message with that bit flipped (asserted exactly), and a flip
inside the msgpack header or an lz4 stream may still decode (a key string
with one changed letter is a valid key). What must always fail is anything in
the prelude or the zero padding, every truncation or extension, an unknown
extension type and every descriptor field set to an inconsistent value.
Anything other than a ``CodecError`` escaping ``loads`` fails the test.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from typing import Any

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arena_eval.broker import CodecError
from arena_eval.broker.arrays import ARRAY_EXT, RAW, Descriptor, align, parse_descriptor
from arena_eval.broker.codec import MAGIC, SCHEMA_VERSION, dumps, loads

PRELUDE, HEADER, PADDING, RAW_DATA, LZ4_DATA = range(5)
PROBED = {"must_raise": 0, "may_decode": 0, "decoded": 0, "raised": 0}


def corpus() -> list[tuple[str, bytes]]:
    """Small valid messages covering every part of the format."""
    rng = np.random.default_rng(11)
    mini_gr1 = {
        "robot_pov_cam_rgb": rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8),
        "joint_pos": rng.standard_normal((2, 7)).astype(np.float32),
        "instruction": "pick up the cube",
    }
    smooth = np.repeat(np.arange(64, dtype=np.int32), 8)
    edge = [np.zeros((0, 3)), np.array(5.0), np.zeros((2, 0), bool), np.float16(1.5)]
    mixed = {
        "c": np.arange(6, dtype=np.complex64).reshape(2, 3),
        7: {"b": np.array([True, False]), "raw": b"\x00\x01\x02", "t": (1, -2.5, None)},
        "big": np.arange(9, dtype=">i8"),
    }
    objs: list[tuple[str, Any, str]] = [
        ("plain", {"a": 1, "s": "text", "l": [1.5, None, True]}, "off"),
        ("scalar", np.float32(2.5), "off"),
        ("gr1-off", mini_gr1, "off"),
        ("gr1-lz4", mini_gr1, "always"),
        ("smooth-lz4", {"x": smooth, "y": smooth[::-1].copy()}, "always"),
        ("edge-off", edge, "off"),
        ("edge-lz4", edge, "always"),
        ("mixed-off", mixed, "off"),
        ("mixed-lz4", mixed, "always"),
    ]
    return [(name, dumps(obj, compression=mode)) for name, obj, mode in objs]


def layout(msg: bytes) -> tuple[np.ndarray, np.ndarray, list[tuple[int, Descriptor]]]:
    """Per-byte region labels, per-byte array index, and (start, descriptor) of each array."""
    (header_len,) = struct.unpack_from("<I", msg, 4)
    head_end = 8 + header_len
    descs: list[Descriptor] = []

    def hook(code: int, payload: bytes) -> None:
        descs.append(parse_descriptor(payload))

    msgpack.unpackb(msg[8:head_end], ext_hook=hook, strict_map_key=False)
    labels = np.full(len(msg), PADDING, np.int8)
    owner = np.full(len(msg), -1, np.int32)
    labels[:8], labels[8:head_end] = PRELUDE, HEADER
    data_start = align(head_end)
    arrays = []
    for index, desc in enumerate(descs):
        start = data_start + desc.offset
        labels[start : start + desc.stored] = RAW_DATA if desc.codec == RAW else LZ4_DATA
        owner[start : start + desc.stored] = index
        arrays.append((start, desc))
    return labels, owner, arrays


def flat_arrays(obj: Any) -> list[np.ndarray]:
    """Arrays of a decoded object in wire order (msgpack keeps dict and list order)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in flat_arrays(v)]
    if isinstance(obj, list):
        return [a for v in obj for a in flat_arrays(v)]
    return []


def probe(data: bytes, must_raise: bool, what: str) -> Any:
    """Decode ``data``; only CodecError may escape loads. Returns the result or None."""
    PROBED["must_raise" if must_raise else "may_decode"] += 1
    try:
        out = loads(data)
    except CodecError:
        PROBED["raised"] += 1
        return None
    assert not must_raise, f"{what}: decoded without CodecError"
    PROBED["decoded"] += 1
    return out


def flip(msg: bytes, positions: list[int], bits: list[int]) -> bytes:
    out = bytearray(msg)
    for pos, bit in zip(positions, bits, strict=True):
        out[pos] ^= 1 << bit
    return bytes(out)


# --------------------------------------------------------------------------- seeded sweep


def sweep_truncations_and_extensions(name: str, msg: bytes, rnd: random.Random) -> None:
    cuts = range(len(msg)) if len(msg) <= 4096 else rnd.sample(range(len(msg)), 600)
    for cut in cuts:
        probe(msg[:cut], True, f"{name} truncated to {cut}")
    for extra in (b"\x00", b"\x00" * 64, bytes(rnd.randrange(256) for _ in range(5))):
        probe(msg + extra, True, f"{name} + {len(extra)} bytes")


def sweep_single_bit_flips(name: str, msg: bytes, rnd: random.Random) -> None:
    labels, owner, arrays = layout(msg)
    for pos in range(len(msg)):
        label = int(labels[pos])
        # Structure bytes get all 8 bits; array bytes one random bit each.
        bits = range(8) if label in (PRELUDE, HEADER, PADDING) else [rnd.randrange(8)]
        for bit in bits:
            bad = flip(msg, [pos], [bit])
            what = f"{name}: bit {bit} of byte {pos} (region {label})"
            out = probe(bad, label in (PRELUDE, PADDING), what)
            if label == RAW_DATA:
                # No checksum: the flip must come through, exactly and only there.
                assert out is not None, what
                start, desc = arrays[int(owner[pos])]
                got = flat_arrays(out)[int(owner[pos])]
                assert got.tobytes() == bad[start : start + desc.stored], what


def sweep_multi_bit_flips(name: str, msg: bytes, rnd: random.Random, count: int) -> None:
    labels, _, _ = layout(msg)
    for _ in range(count):
        k = rnd.randint(2, 8)
        positions = [rnd.randrange(len(msg)) for _ in range(k)]
        bad = flip(msg, positions, [rnd.randrange(8) for _ in range(k)])
        if bad == msg:
            continue
        structural = all(int(labels[p]) in (PRELUDE, PADDING) for p in positions)
        probe(bad, structural, f"{name}: flips at {positions}")


def sweep_header_bytes(name: str, msg: bytes, rnd: random.Random, count: int) -> None:
    (header_len,) = struct.unpack_from("<I", msg, 4)
    for _ in range(count):
        bad = bytearray(msg)
        pos = 8 + rnd.randrange(header_len)
        bad[pos] = rnd.randrange(256)
        probe(bytes(bad), False, f"{name}: header byte {pos} = {bad[pos]}")


def descriptor_corruptions(desc: Descriptor, payload: bytes) -> list[tuple[str, bytes]]:
    """Payload variants every one of which the decoder must reject."""

    def patch(at: int, fmt: str, value: int | bytes) -> bytes:
        out = bytearray(payload)
        struct.pack_into(fmt, out, at, value)
        return bytes(out)

    bad = [
        ("codec", patch(0, "<B", 2)),
        ("codec", patch(0, "<B", 255)),
        ("ndim+1", patch(1, "<B", desc.shape.__len__() + 1)),
        ("ndim=33", patch(1, "<B", 33)),
        ("truncated", payload[:-1]),
        ("extended", payload + b"\x00" * 8),
        ("offset+1", patch(6, "<Q", desc.offset + 1)),
        ("offset+64", patch(6, "<Q", desc.offset + 64)),
        ("offset huge", patch(6, "<Q", 2**64 - 1)),
        ("raw+1", patch(22, "<Q", desc.raw + 1)),
        ("raw huge", patch(22, "<Q", 2**63)),
    ]
    bad += [(f"dtype {d!r}", patch(2, "4s", d)) for d in (b"|O", b"<U4", b"<M8", b"|V8", b"<f16")]
    if desc.codec == RAW:
        bad.append(("stored+1", patch(14, "<Q", desc.stored + 1)))
    if desc.raw:  # changing a dim of a non-empty array changes its byte count
        bad.append(("dim+1", patch(30, "<Q", desc.shape[0] + 1) if desc.shape else payload[:-1]))
    return bad


def sweep_descriptors(name: str, msg: bytes) -> None:
    (header_len,) = struct.unpack_from("<I", msg, 4)
    payloads: list[bytes] = []
    msgpack.unpackb(
        msg[8 : 8 + header_len], ext_hook=lambda c, p: payloads.append(p), strict_map_key=False
    )
    for payload in payloads:
        at = msg.index(payload, 8, 8 + header_len)
        desc = parse_descriptor(payload)
        for field, variant in descriptor_corruptions(desc, payload):
            if len(variant) == len(payload):
                probe(msg[:at] + variant + msg[at + len(payload) :], True, f"{name}: {field}")
        for code in (0, 2, 5, 127, -1 & 0xFF, 0x80):
            bad = bytearray(msg)
            bad[at - 1] = code  # the ext type byte sits right before the payload
            probe(bytes(bad), True, f"{name}: ext code {code}")


def sweep_random_bytes(rnd: random.Random, count: int) -> None:
    for _ in range(count):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(300)))
        probe(data, not data.startswith(MAGIC + bytes([SCHEMA_VERSION])), "random bytes")
        # Behind a valid prelude, the random bytes reach the msgpack parser.
        framed = MAGIC + bytes([SCHEMA_VERSION]) + struct.pack("<I", len(data)) + data
        probe(framed, False, "random header")


def test_seeded_sweep_of_corrupted_messages() -> None:
    rnd = random.Random(20240601)
    before = dict(PROBED)
    for name, msg in corpus():
        loads(msg)  # the corpus itself is valid
        sweep_truncations_and_extensions(name, msg, rnd)
        sweep_single_bit_flips(name, msg, rnd)
        sweep_multi_bit_flips(name, msg, rnd, 300)
        sweep_header_bytes(name, msg, rnd, 300)
        sweep_descriptors(name, msg)
    sweep_random_bytes(rnd, 1500)
    done = Counter({k: PROBED[k] - before[k] for k in PROBED})
    total = done["must_raise"] + done["may_decode"]
    print(f"\ncodec fuzz: {total} inputs, {dict(done)}")
    assert total > 10_000
    assert done["must_raise"] > 5_000


# --------------------------------------------------------------------------- hypothesis

PREFIX = MAGIC + bytes([SCHEMA_VERSION])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    probe(data, not data.startswith(PREFIX), "arbitrary bytes")


@settings(max_examples=500, deadline=None)
@given(header=st.binary(max_size=256), tail=st.binary(max_size=256))
def test_arbitrary_header_behind_a_valid_prelude(header: bytes, tail: bytes) -> None:
    probe(PREFIX + struct.pack("<I", len(header)) + header + tail, False, "random header")


U64 = st.one_of(st.integers(0, 80), st.sampled_from([2**32, 2**63 - 1, 2**63, 2**64 - 1]))
DTYPE_CODES = st.sampled_from([b"|u1", b"<f4", b"<c16", b"|b1", b">f4", b"|O", b"<U2", b"\0\0\0\0"])


@settings(max_examples=500, deadline=None)
@given(
    codec=st.integers(0, 3),
    dtype=DTYPE_CODES,
    dims=st.lists(U64, max_size=4),
    offset=U64,
    stored=U64,
    raw=U64,
    body=st.binary(max_size=128),
    ext_code=st.sampled_from([ARRAY_EXT, ARRAY_EXT, 0, 2, 100]),
)
def test_arbitrary_descriptors(
    codec: int,
    dtype: bytes,
    dims: list[int],
    offset: int,
    stored: int,
    raw: int,
    body: bytes,
    ext_code: int,
) -> None:
    payload = struct.pack("<BB4sQQQ", codec, len(dims), dtype.ljust(4, b"\0"), offset, stored, raw)
    payload += struct.pack(f"<{len(dims)}Q", *dims)
    header = msgpack.packb({"a": msgpack.ExtType(ext_code, payload)})
    head = PREFIX + struct.pack("<I", len(header)) + header
    data = head + bytes(-len(head) % 64) + body
    out = probe(data, ext_code != ARRAY_EXT, "arbitrary descriptor")
    if out is not None:  # then the descriptor was fully consistent
        arr = out["a"]
        assert arr.shape == tuple(dims) and arr.nbytes == raw

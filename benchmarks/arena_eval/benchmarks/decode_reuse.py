"""The policy worker's decode of a compressed GR1 request: fresh buffers vs its reused ones.

Both sides call the worker's own ``decoding.decode`` on the same request entry
(10 rendered 512x512x3 frames + joint positions, lz4 ``auto``: ~1.65 MB on the
wire, 7.9 MB decoded), alternating in blocks within one process so machine
drift hits them alike:

* ``fresh``: ``buffers=None``, the path every worker took before -- python-lz4
  decompresses each 256 KiB chunk into a new ``bytes``, copied into a new array;
* ``reused``: the worker's ``DecodeBuffers`` -- ``LZ4_decompress_safe`` writes
  straight into a pooled, aligned buffer no array still uses.

Each iteration decodes a fresh copy of the entry bytes, as a worker gets a new
``bytes`` from every read. Figures: median ``decode_ms`` (what a reply's
``timing`` reports) and minor page faults per decode.

``arena-eval bench decode [--requests 200] [--json]``
"""

from __future__ import annotations

import resource
import statistics
from typing import Any

import numpy as np

from arena_eval.benchmarks.codec_throughput import FRAMES, gr1_payload, rendered_scene
from arena_eval.broker import codec, shm
from arena_eval.broker.constants import F_DATA, F_REPLY, F_RID
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import InferRequest
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker import decoding
from arena_eval.policy_worker.decode_buffers import DecodeBuffers
from arena_eval.policy_worker.entries import Pending

_BLOCK = 10


def _entry(keys: Keys) -> dict[bytes, bytes]:
    rng = np.random.default_rng(0)
    frames = np.stack([rendered_scene(rng) for _ in range(FRAMES)])
    obs = {k: v for k, v in gr1_payload(frames, rng).items() if isinstance(v, np.ndarray)}
    request = InferRequest(
        rid="r", client="c", episode_ids=[str(i) for i in range(FRAMES)], obs=obs
    )
    request.fill_context(FRAMES)
    msg = codec.dumps(request.to_message(), compression="auto")
    return {F_RID: b"r", F_REPLY: keys.reply_stream("c").encode(), F_DATA: msg}


def run_decode_reuse(*, requests: int = 200) -> dict[str, Any]:
    keys = Keys("bench:")
    fields = _entry(keys)
    spec = PolicySpec(name="bench", action_shape=(1, 1))
    reader = shm.SlotReader()
    sides: dict[str, DecodeBuffers | None] = {"fresh": None, "reused": DecodeBuffers()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    faults = dict.fromkeys(sides, 0)
    for _ in range(3):  # warm-up, both sides
        for buffers in sides.values():
            _decode_once(fields, keys, spec, reader, buffers)
    for _ in range(max(1, requests // _BLOCK)):
        for name, buffers in sides.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(_BLOCK):
                times[name].append(_decode_once(fields, keys, spec, reader, buffers))
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    out: dict[str, Any] = {"wire_bytes": len(fields[F_DATA]), "requests_per_side": 0}
    for name in sides:
        n = len(times[name])
        out["requests_per_side"] = n
        out[f"{name}_decode_ms_p50"] = round(statistics.median(times[name]), 3)
        out[f"{name}_decode_ms_mean"] = round(statistics.fmean(times[name]), 3)
        out[f"{name}_minor_faults_per_decode"] = round(faults[name] / n, 1)
    out["reused_over_fresh_p50"] = round(
        out["reused_decode_ms_p50"] / out["fresh_decode_ms_p50"], 3
    )
    return out


def _decode_once(
    fields: dict[bytes, bytes],
    keys: Keys,
    spec: PolicySpec,
    reader: shm.SlotReader,
    buffers: DecodeBuffers | None,
) -> float:
    entry = {k: bytes(bytearray(v)) for k, v in fields.items()}  # a read's fresh bytes
    p = decoding.decode(Pending("s", b"1-0", entry, 0.0), keys, spec, reader, buffers)
    if p.request is None:
        raise RuntimeError(f"the GR1 entry did not decode: {p.error}")
    return p.decode_ms


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"compressed GR1 request, {result['wire_bytes'] / 1e6:.2f} MB on the wire, "
        f"{result['requests_per_side']} decodes per side, alternating",
        f"{'':8s} {'p50 ms':>8s} {'mean ms':>8s} {'faults/decode':>14s}",
    ]
    for name in ("fresh", "reused"):
        lines.append(
            f"{name:8s} {result[f'{name}_decode_ms_p50']:8.3f} "
            f"{result[f'{name}_decode_ms_mean']:8.3f} "
            f"{result[f'{name}_minor_faults_per_decode']:14.1f}"
        )
    lines.append(f"reused / fresh (p50): {result['reused_over_fresh_p50']:.2f}x")
    return "\n".join(lines)

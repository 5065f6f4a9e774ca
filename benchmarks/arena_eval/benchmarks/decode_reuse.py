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

With Redis (``run_pool_decode``), the same comparison end to end: two real
``PolicyWorker`` threads on two pools, one with its buffers and one without,
and one ``PolicyClient`` (``transport='redis'``, lz4 ``auto``) alternating
between them in blocks; the figure is the ``decode_ms`` the replies report,
measured inside each worker with its real heap.

``arena-eval bench decode [--requests 200] [--no-pool] [--json]``
"""

from __future__ import annotations

import resource
import statistics
import threading
import uuid
from typing import Any

import numpy as np

from arena_eval.benchmarks.codec_throughput import FRAMES, gr1_payload, rendered_scene
from arena_eval.broker import codec, shm
from arena_eval.broker.constants import F_DATA, F_REPLY, F_RID
from arena_eval.broker.keys import Keys
from arena_eval.broker.protocol import InferRequest
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker import decoding
from arena_eval.policy_worker.decode_buffers import DecodeBuffers
from arena_eval.policy_worker.entries import Pending
from arena_eval.policy_worker.server import PolicyWorker

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


def run_pool_decode(settings: RedisSettings, *, requests: int = 100) -> dict[str, Any]:
    """``decode_ms`` of compressed GR1 in two real workers: fresh buffers vs reused ones."""
    from arena_eval.benchmarks.policies import FixedLatencyPolicy
    from arena_eval.sim_worker.client import PolicyClient

    rng = np.random.default_rng(0)
    frames = np.stack([rendered_scene(rng) for _ in range(FRAMES)])
    obs = {k: v for k, v in gr1_payload(frames, rng).items() if isinstance(v, np.ndarray)}
    ids = list(range(FRAMES))
    tag = uuid.uuid4().hex[:8]
    workers: dict[str, PolicyWorker] = {}
    for name in ("fresh", "reused"):
        w = PolicyWorker(f"bench-dec-{name}-{tag}", FixedLatencyPolicy("0"), settings)
        if name == "fresh":
            w.decoder.buffers = None  # the path before DecodeBuffers
        workers[name] = w
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers.values()]
    for t in threads:
        t.start()
    times: dict[str, list[float]] = {name: [] for name in workers}
    try:
        clients = {
            name: PolicyClient(w.pool, settings, timeout_s=60, transport="redis",
                               compression="auto")
            for name, w in workers.items()
        }  # fmt: skip
        for client in clients.values():
            for _ in range(3):
                client.infer(obs, ids)
        for _ in range(max(1, requests // _BLOCK)):
            for name, client in clients.items():
                for _ in range(_BLOCK):
                    client.infer(obs, ids)
                    times[name].append(client.last_timing["decode_ms"])
        for client in clients.values():
            client.close()
    finally:
        for w in workers.values():
            w.stop()
        for t in threads:
            t.join(10)
    out: dict[str, Any] = {"requests_per_side": len(times["fresh"])}
    for name, values in times.items():
        out[f"{name}_decode_ms_p50"] = round(statistics.median(values), 3)
        out[f"{name}_decode_ms_mean"] = round(statistics.fmean(values), 3)
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
    pool = result.get("pool")
    lines = [
        *(
            [
                f"in two real workers through Redis, {pool['requests_per_side']} requests "
                f"each: decode_ms p50 fresh {pool['fresh_decode_ms_p50']:.3f}, reused "
                f"{pool['reused_decode_ms_p50']:.3f} ({pool['reused_over_fresh_p50']:.2f}x)"
            ]
            if pool
            else []
        ),
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

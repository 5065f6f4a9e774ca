"""Codec throughput on the GR1 policy request, next to a plain numpy copy of the same bytes.

    python benchmarks/codec_throughput.py [--repeats N] [--json]

The GR1 payload is 10 x 512x512x3 uint8 camera frames, 10 x 54 float32 joint
positions and an instruction string (~7.9 MB). Every figure is the median of
N timed repeats after a warm-up, all in one process so they are comparable:

* ``np.copyto`` into preallocated buffers and a fresh ``.copy()`` of the same
  arrays: the floor any codec that produces a new buffer is measured against;
* ``dumps`` + ``loads`` with compression off and auto (noise frames, which
  AUTO must detect and skip), ``dumps_parts`` alone (zero copy) and
  ``dumps_parts`` written into a preallocated receive buffer + ``loads``
  (what a vectored socket write and ``recv_into`` would do);
* the same with rendered-looking frames, which AUTO compresses, plus the lz4
  ratio and speed of those frames with lz4.block and lz4.frame.

No real camera frames ship with the repository, so the "rendered" frames are
synthetic: sky gradient, tiled floor, flat-shaded objects and a band of
texture noise, which is what simulator renders look like to lz4.

The target is encode+decode without compression within 3x of the copy.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import lz4.block
import lz4.frame
import numpy as np

from arena_eval.broker.codec import dumps, dumps_parts, loads

FRAMES, HEIGHT, WIDTH, JOINTS = 10, 512, 512, 54


def rendered_scene(rng: np.random.Generator, h: int = HEIGHT, w: int = WIDTH) -> np.ndarray:
    """A synthetic simulator frame: gradients, flat regions, a little noise."""
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    img = np.empty((h, w, 3), np.float32)
    img[..., 0], img[..., 1], img[..., 2] = 120 + 60 * y, 160 + 40 * y, 220 - 30 * y
    tiles = (np.arange(h)[:, None] // 32 + np.arange(w)[None, :] // 32) % 2
    floor = slice(h * 3 // 5, h)
    img[floor] = np.array([150, 120, 90], np.float32) - 20 * tiles[floor, :, None]
    yy, xx = np.ogrid[:h, :w]
    for _ in range(4):
        cy, cx, r = rng.integers(h // 3, h - 40), rng.integers(40, w - 40), rng.integers(15, 40)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    texture = slice(h * 3 // 5, h * 4 // 5)  # a textured table top
    img[texture] += rng.normal(0, 3, img[texture].shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def gr1_payload(images: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "robot_pov_cam_rgb": images,
        "joint_pos": rng.standard_normal((FRAMES, JOINTS)).astype(np.float32),
        "instruction": "pick up the red cube and place it in the bowl",
    }


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def arrays_of(payload: dict[str, Any]) -> list[np.ndarray]:
    return [v for v in payload.values() if isinstance(v, np.ndarray)]


def copy_rows(payload: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    arrays = arrays_of(payload)
    targets = [np.empty_like(a) for a in arrays]

    def copyto() -> None:
        for dst, src in zip(targets, arrays, strict=True):
            np.copyto(dst, src)

    return {
        "np.copyto (preallocated)": {"total": median_seconds(copyto, repeats)},
        "ndarray.copy() (fresh)": {
            "total": median_seconds(lambda: [a.copy() for a in arrays], repeats)
        },
    }


def _round_trip(payload: dict[str, Any], mode: str) -> Any:
    return loads(dumps(payload, compression=mode))


def codec_rows(payload: dict[str, Any], label: str, repeats: int) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for mode in ("off", "auto"):
        msg = dumps(payload, compression=mode)
        encode = median_seconds(functools.partial(dumps, payload, compression=mode), repeats)
        decode = median_seconds(functools.partial(loads, msg), repeats)
        both = median_seconds(functools.partial(_round_trip, payload, mode), repeats)
        rows[f"dumps+loads {mode:4s} ({label})"] = {
            "encode": encode,
            "decode": decode,
            "total": both,
            "wire_bytes": len(msg),
        }
    if label == "noise":
        _, total = dumps_parts(payload, compression="off")
        recv = bytearray(total)

        def parts_only() -> None:
            dumps_parts(payload, compression="off")

        def parts_recv_loads() -> None:
            parts, _ = dumps_parts(payload, compression="off")
            view, pos = memoryview(recv), 0
            for part in parts:  # what sendmsg + recv_into would move
                view[pos : pos + len(part)] = part
                pos += len(part)
            loads(recv)

        rows["dumps_parts only (off)"] = {"total": median_seconds(parts_only, repeats)}
        rows["dumps_parts+recv_into+loads (off)"] = {
            "total": median_seconds(parts_recv_loads, repeats)
        }
    return rows


def lz4_rows(images: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    data = images.reshape(-1).data
    rows: dict[str, dict[str, float]] = {}
    block = lz4.block.compress(data, store_size=False)
    frame = lz4.frame.compress(data)
    rows["lz4.block"] = {
        "ratio": images.nbytes / len(block),
        "compress": median_seconds(lambda: lz4.block.compress(data, store_size=False), repeats),
        "decompress": median_seconds(
            lambda: lz4.block.decompress(block, uncompressed_size=images.nbytes), repeats
        ),
    }
    rows["lz4.frame"] = {
        "ratio": images.nbytes / len(frame),
        "compress": median_seconds(lambda: lz4.frame.compress(data), repeats),
        "decompress": median_seconds(lambda: lz4.frame.decompress(frame), repeats),
    }
    return rows


def print_table(payload_bytes: int, rows: dict[str, dict[str, float]], lz4: dict[str, Any]) -> None:
    copyto = rows["np.copyto (preallocated)"]["total"]
    fresh = rows["ndarray.copy() (fresh)"]["total"]
    print(f"GR1 payload: {payload_bytes / 1e6:.2f} MB of arrays, median of repeats\n")
    head = f"{'case':44s} {'enc ms':>7s} {'dec ms':>7s} {'total ms':>8s} {'GB/s':>6s}"
    print(f"{head} {'x copyto':>8s} {'x .copy':>8s} {'wire MB':>8s}")
    for name, row in rows.items():
        enc = f"{row['encode'] * 1e3:7.3f}" if "encode" in row else f"{'':7s}"
        dec = f"{row['decode'] * 1e3:7.3f}" if "decode" in row else f"{'':7s}"
        wire = f"{row['wire_bytes'] / 1e6:8.2f}" if "wire_bytes" in row else f"{'':8s}"
        total = row["total"]
        print(
            f"{name:44s} {enc} {dec} {total * 1e3:8.3f} {payload_bytes / total / 1e9:6.2f} "
            f"{total / copyto:8.2f} {total / fresh:8.2f} {wire}"
        )
    print(f"\nlz4 on {FRAMES} rendered {HEIGHT}x{WIDTH}x3 frames ({lz4['bytes'] / 1e6:.2f} MB):")
    for name in ("lz4.block", "lz4.frame"):
        row, size = lz4[name], lz4["bytes"]
        comp, decomp = size / row["compress"] / 1e9, size / row["decompress"] / 1e9
        print(
            f"  {name:10s} ratio {row['ratio']:5.2f}x  compress {comp:5.2f} GB/s"
            f"  decompress {decomp:5.2f} GB/s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per case")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    rendered = np.stack([rendered_scene(rng) for _ in range(FRAMES)])
    noisy, smooth = gr1_payload(noise, rng), gr1_payload(rendered, rng)
    payload_bytes = sum(a.nbytes for a in arrays_of(noisy))

    rows = copy_rows(noisy, args.repeats)
    rows |= codec_rows(noisy, "noise", args.repeats)
    rows |= codec_rows(smooth, "rendered", args.repeats)
    lz4: dict[str, Any] = {"bytes": rendered.nbytes, **lz4_rows(rendered, args.repeats)}

    if args.json:
        copyto = rows["np.copyto (preallocated)"]["total"]
        for row in rows.values():
            row["gb_per_s"] = payload_bytes / row["total"] / 1e9
            row["x_copyto"] = row["total"] / copyto
        json.dump({"payload_bytes": payload_bytes, "rows": rows, "lz4": lz4}, sys.stdout, indent=2)
        print()
    else:
        print_table(payload_bytes, rows, lz4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

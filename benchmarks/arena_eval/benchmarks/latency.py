"""Round-trip latency: the fabric vs direct ZeroMQ REQ/REP baselines, side by side.

Every server runs the zero policy in its own process, and all paths are
measured in alternating blocks within one run, so machine drift hits them
alike. The baseline is the seed's protocol (ZMQ REQ/REP, msgpack, arrays as
np.save bytes); a stricter one with zero-copy raw arrays is reported too.
The figures that matter are the ratios fabric_p50 / baseline_p50. The fabric's
requests carry the per-row context a real sim sends (``ROW_CONTEXT``: step,
start flag, task, and the seed GR1 workload's instruction), so the cost of
task context is in its figures.

``python -m arena_eval.benchmarks.latency --payload gr1`` or
``arena-eval bench latency --payload gr1 [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from arena_eval.benchmarks.payloads import ACTION_SHAPE, PAYLOADS, make_payload, payload_bytes
from arena_eval.broker.connection import connect, resolve_url
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.settings import RedisSettings

#: What every fabric request carries besides its rows, as a sim sends it (one task per rollout).
ROW_CONTEXT: dict[str, Any] = {
    "steps": 0,
    "starts": False,
    "tasks": "gr1/open-microwave",
    "instructions": "Reach out to the microwave and open it.",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _child(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class _ZmqClient:
    def __init__(self, port: int, encoding: str, *, stop_on_close: bool = True) -> None:
        import zmq

        from arena_eval.benchmarks.zmq_baseline import pack, unpack

        self._encoding = encoding
        self._stop_on_close = stop_on_close
        self._pack: Callable[[Any, str], bytes] = pack
        self._unpack: Callable[[Any, str], Any] = unpack
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.sock.send(self._pack({b"obs": obs}, self._encoding), copy=False)
        reply = self._unpack(self.sock.recv(copy=False).buffer, self._encoding)
        return reply[b"actions"]  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._stop_on_close:
            self.sock.send(b"stop")
            self.sock.recv()
        self.sock.close(linger=0)
        self.ctx.term()


def _timed(fn: Callable[[], object], n: int, out: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)


def run_latency(
    payload: str,
    *,
    requests: int = 100,
    settings: RedisSettings | None = None,
    transport: str = "auto",
    block: int = 10,
) -> dict[str, Any]:
    """Measure both paths on ``payload``; return p50/p99 of each and the ratio."""
    try:
        import zmq  # noqa: F401
    except ImportError:
        raise ArenaEvalError(
            "the baseline needs pyzmq: pip install 'arena-eval[dev]' (or pip install pyzmq)"
        ) from None
    from arena_eval.sim_worker.client import PolicyClient

    settings = settings or RedisSettings.from_env()
    url = resolve_url(settings)
    pool = f"bench-{uuid.uuid4().hex[:8]}"
    obs = make_payload(payload)
    ids = list(range(next(iter(obs.values())).shape[0]))
    port, raw_port = _free_port(), _free_port()
    worker_env = {"ARENA_REDIS_URL": url, "ARENA_PREFIX": settings.prefix}
    serve = ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", "zero",
             "--policy-arg", f"action_shape={ACTION_SHAPE[0]}x{ACTION_SHAPE[1]}",
             "--max-wait-ms", "0"]  # fmt: skip
    with (
        _child(["-m", "arena_eval.benchmarks.zmq_baseline", str(port), "seed"]),
        _child(["-m", "arena_eval.benchmarks.zmq_baseline", str(raw_port), "raw"]),
        _child(serve, worker_env) as worker,
    ):
        zmq_client = _ZmqClient(port, "seed")
        raw_client = _ZmqClient(raw_port, "raw")
        r = connect(settings.with_url(url))
        try:
            client = PolicyClient(pool, settings.with_url(url), client=r, timeout_s=60,
                                  transport=transport)  # fmt: skip
        except ArenaEvalError:
            err = worker.stderr.read().decode(errors="replace") if worker.stderr else ""
            raise ArenaEvalError(f"benchmark policy worker did not start:\n{err[-2000:]}") from None
        fabric: list[float] = []
        baseline: list[float] = []
        raw: list[float] = []
        timings: list[dict[str, float]] = []
        try:
            for _ in range(3):  # warm up both paths (connections, slots, page faults)
                client.infer(obs, ids, **ROW_CONTEXT)
                zmq_client.infer(obs)
                raw_client.infer(obs)
            done = 0
            while done < requests:
                n = min(block, requests - done)
                _timed(lambda: zmq_client.infer(obs), n, baseline)
                _timed(lambda: raw_client.infer(obs), n, raw)
                for _ in range(n):
                    t0 = time.perf_counter()
                    client.infer(obs, ids, **ROW_CONTEXT)
                    fabric.append((time.perf_counter() - t0) * 1e3)
                    timings.append(client.last_timing)
                done += n
            route = client.route.last  # shm, blob or inline
        finally:
            client.close()
            zmq_client.close()
            raw_client.close()
            r.close()
    f50, f99 = np.percentile(fabric, [50, 99])
    b50, b99 = np.percentile(baseline, [50, 99])
    r50, r99 = np.percentile(raw, [50, 99])
    breakdown = {
        k: round(float(np.mean([t.get(k, 0.0) for t in timings])), 4)
        for k in ("encode_client_ms", "queue_ms", "decode_ms", "infer_ms", "encode_ms")
    }
    return {
        "payload": payload,
        "payload_bytes": payload_bytes(obs),
        "requests": requests,
        "route": route,
        "redis": settings.with_url(url).masked_url(),
        "fabric_p50_ms": round(float(f50), 4),
        "fabric_p99_ms": round(float(f99), 4),
        "baseline_p50_ms": round(float(b50), 4),
        "baseline_p99_ms": round(float(b99), 4),
        "ratio": round(float(f50 / b50), 3),
        "raw_zmq_p50_ms": round(float(r50), 4),
        "raw_zmq_p99_ms": round(float(r99), 4),
        "ratio_vs_raw": round(float(f50 / r50), 3),
        "fabric_breakdown_ms": breakdown,
    }


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'payload':<9}{'bytes':>10}{'route':>6} | {'fabric p50/p99 ms':>18} | "
        f"{'seed-zmq p50/p99':>17} {'ratio':>6} | {'raw-zmq p50/p99':>16} {'ratio':>6}"
    ]
    for r in results:
        lines.append(
            f"{r['payload']:<9}{r['payload_bytes']:>10}{r['route']:>6} | "
            f"{r['fabric_p50_ms']:>8.3f} /{r['fabric_p99_ms']:>8.3f} | "
            f"{r['baseline_p50_ms']:>7.3f} /{r['baseline_p99_ms']:>8.3f} {r['ratio']:>5.2f}x | "
            f"{r['raw_zmq_p50_ms']:>6.3f} /{r['raw_zmq_p99_ms']:>8.3f} {r['ratio_vs_raw']:>5.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payload", default="all", choices=[*PAYLOADS, "all"])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--transport", default="auto", choices=["auto", "redis", "shm"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    kinds = list(PAYLOADS) if args.payload == "all" else [args.payload]
    results = [run_latency(k, requests=args.requests, transport=args.transport) for k in kinds]
    print(json.dumps(results, indent=2) if args.json else format_table(results))


if __name__ == "__main__":
    main()

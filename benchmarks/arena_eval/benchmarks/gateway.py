"""Gateways vs the peers' own servers: N unmodified clients, one fixed-cost model.

The peers' servers answer one request at a time: openpi's
``WebsocketPolicyServer`` runs ``infer`` on its event loop (openpi#717), and
the seed's (and GR00T's) REP socket is serial by construction. A gateway puts
each client in its own session into a pool, so N clients' requests meet in
one forward pass. With a model whose forward pass costs the same at any small
batch (``FixedLatencyPolicy``, the regime of a GPU model), the peers'
aggregate stays at one request per forward pass while the gateway's grows
with N (the pool's batching window, ``--max-wait-ms``, closes as soon as every
active client is in, so it costs nothing at N = 1). At N = 1 the figure that
matters is what the gateway's extra hops (gateway -> Redis -> worker and
back) add to the p50 round trip.

Two families, measured side by side in one run, each client a process of its
own stepping as fast as answers come (steps = requests x chunk length):

* ``openpi``: openpi-client's ``WebsocketClientPolicy`` + ``ActionChunkBroker``
  from PyPI, unmodified, in the cached openpi venv (``openpi_venv``), against
  ``arena-eval gateway openpi`` and against openpi's ``WebsocketPolicyServer``
  (PyPI ``openpi-server``; skipped where it does not install);
* ``zmq``: seed-protocol REQ clients (``{"endpoint", "data", "api_token"}``,
  arrays as np.save bytes) against ``arena-eval gateway zmq`` and against a
  seed-shaped REP server running the same fixed-cost model.

``arena-eval bench gateway [--clients 1,4,8] [--json]`` or
``python -m arena_eval.benchmarks.gateway``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from arena_eval.benchmarks.latency import _child, _free_port
from arena_eval.broker.connection import resolve_url
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.settings import RedisSettings

__all__ = ["FAMILIES", "format_table", "run_gateway_bench"]

POLICY = "arena_eval.benchmarks.policies:FixedLatencyPolicy"
FAMILIES = ("openpi", "zmq")
_PEER_SCRIPT = Path(__file__).with_name("openpi_peer.py")
_START_MARGIN_S = 4.0  # client processes connect and warm up before the common start


# -- the seed protocol: a REP server and a REQ client (zmq family) ------------------------
def _npy(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buf.getvalue()}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _from_npy(obj: dict[Any, Any]) -> Any:
    if obj.get("__ndarray_class__") is True:
        return np.load(io.BytesIO(obj["as_npy"]), allow_pickle=False)
    return obj


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, default=_npy, use_bin_type=True)
    return out


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_from_npy, raw=False)


def _observation(payload: str, step: int) -> dict[str, np.ndarray]:
    obs = {"state": np.full((1, 8), step, np.float32)}
    if payload == "libero":
        obs["image"] = np.full((1, 224, 224, 3), step % 255, np.uint8)
        obs["wrist_image"] = np.full((1, 224, 224, 3), step % 251, np.uint8)
    return obs


def seed_rep_server(port: int, latency_ms: float, horizon: int, dim: int) -> None:
    """The seed's server shape: one REP socket, one request at a time, the same fixed cost."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        msg = _unpack(sock.recv())
        endpoint = msg.get("endpoint")
        if endpoint == "get_action":
            rows = next(iter(msg["data"]["observation"].values())).shape[0]
            time.sleep(latency_ms / 1000.0)
            reply: Any = [np.zeros((rows, horizon, dim), np.float32), {}]
        elif endpoint == "get_init_info":
            reply = {"action_mode": "chunk", "action_dim": dim, "action_chunk_length": horizon}
        elif endpoint == "kill":
            sock.send(_pack({"status": "stopping"}))
            break
        else:
            reply = {"status": "ok"}
        sock.send(_pack(reply))
    ctx.destroy(linger=0)


def seed_req_client(address: str, seconds: float, start_at: float, payload: str) -> None:
    """A seed-protocol client: get_init_info, then one get_action per chunk; prints JSON."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)
    sock.connect(address)

    def call(endpoint: str, **data: Any) -> Any:
        sock.send(_pack({"endpoint": endpoint, "data": data}))
        reply = _unpack(sock.recv())
        if isinstance(reply, dict) and "error" in reply:
            raise SystemExit(f"{endpoint}: {reply['error']}")
        return reply

    info = call("get_init_info", requested_action_mode="chunk")
    horizon = int(info.get("action_chunk_length", 1))
    frames = [_observation(payload, i) for i in range(horizon)]
    call("get_action", observation=frames[0])  # warm-up
    time.sleep(max(0.0, start_at - time.time()))
    times: list[float] = []
    steps = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        call("get_action", observation=frames[steps % horizon])
        times.append((time.perf_counter() - t0) * 1e3)
        steps += horizon  # the chunk buffer steps H times per request
    print(json.dumps({"steps": steps, "request_ms": times}))
    ctx.destroy(linger=0)


# -- orchestration ------------------------------------------------------------------------
def _wait_http(
    port: int, path: str, timeout_s: float, procs: Sequence[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                raise ArenaEvalError(f"{p.args!r} exited with {p.returncode}: {err[-800:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise ArenaEvalError(f"nothing answered http://127.0.0.1:{port}{path} within {timeout_s:.0f} s")


def _wait_port(port: int, timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise ArenaEvalError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def _run_clients(argv_for: Callable[[float], list[str]], n: int, seconds: float) -> dict[str, Any]:
    """N client processes from a common start; aggregate steps/s and request p50/p99."""
    start_at = time.time() + _START_MARGIN_S + 0.25 * n
    argv = argv_for(start_at)
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=seconds + _START_MARGIN_S + 0.25 * n + 120) for p in procs]
    steps = 0
    times: list[float] = []
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise ArenaEvalError(f"a benchmark client failed ({p.returncode}): {err[-800:]}")
        result = json.loads(out.strip().splitlines()[-1])
        steps += int(result["steps"])
        times.extend(float(t) for t in result["request_ms"])
    arr = np.asarray(times) if times else np.zeros(1)
    return {
        "steps_per_s": round(steps / seconds, 1),
        "requests": len(times),
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
    }


@contextmanager
def _pool(settings: RedisSettings, latency_ms: float, shape: str, max_clients: int,
          max_wait_ms: float) -> Iterator[tuple[str, dict[str, str]]]:  # fmt: skip
    url = resolve_url(settings)
    pool = f"bench-gw-{uuid.uuid4().hex[:8]}"
    env = {"ARENA_REDIS_URL": url, "ARENA_PREFIX": settings.prefix}
    batch = str(max(64, max_clients))
    serve = ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", POLICY,
             "--policy-arg", f"latency_ms={latency_ms}", "--policy-arg", f"action_shape={shape}",
             "--max-batch", batch, "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    with _child(serve, env):
        yield pool, env


_Paths = dict[str, Callable[[float], list[str]]]


def _family_openpi(stack: ExitStack, pool: str, env: dict[str, str], args: _Args,
                   python: str, has_server: bool) -> _Paths:  # fmt: skip
    gw_port, peer_port = _free_port(), _free_port()
    argv = ["-m", "arena_eval.cli", "gateway", "openpi", "--pool", pool,
            "--host", "127.0.0.1", "--port", str(gw_port)]  # fmt: skip
    gateway = stack.enter_context(_child(argv, env))
    _wait_http(gw_port, "/readyz", 60, [gateway])
    paths: _Paths = {}

    def client(port: int) -> Callable[[float], list[str]]:
        return lambda start_at: [python, str(_PEER_SCRIPT), "client", str(port),
                                 str(args.seconds), str(start_at), args.payload]  # fmt: skip

    paths["gateway"] = client(gw_port)
    if has_server:
        h, a = args.action_shape.split("x")
        peer = [python, str(_PEER_SCRIPT), "server", str(peer_port), str(args.latency_ms), h, a]
        stack.enter_context(_popen(peer))
        _wait_http(peer_port, "/healthz", 60, [])
        paths["peer"] = client(peer_port)
    return paths


def _family_zmq(stack: ExitStack, pool: str, env: dict[str, str], args: _Args) -> _Paths:
    gw_port, peer_port = _free_port(), _free_port()
    gateway = ["-m", "arena_eval.cli", "gateway", "zmq", "--pool", pool,
               "--bind", f"tcp://127.0.0.1:{gw_port}"]  # fmt: skip
    stack.enter_context(_child(gateway, env))
    h, a = args.action_shape.split("x")
    seed = ["-m", "arena_eval.benchmarks.gateway", "seed-server", str(peer_port),
            str(args.latency_ms), h, a]  # fmt: skip
    stack.enter_context(_child(seed))
    _wait_port(gw_port, 60)
    _wait_port(peer_port, 60)

    def client(port: int) -> Callable[[float], list[str]]:
        return lambda start_at: [sys.executable, "-m", "arena_eval.benchmarks.gateway",
                                 "seed-client", f"tcp://127.0.0.1:{port}", str(args.seconds),
                                 str(start_at), args.payload]  # fmt: skip

    return {"gateway": client(gw_port), "peer": client(peer_port)}


@contextmanager
def _popen(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _Args:
    def __init__(self, seconds: float, latency_ms: float, action_shape: str, payload: str) -> None:
        self.seconds = seconds
        self.latency_ms = latency_ms
        self.action_shape = action_shape
        self.payload = payload


def run_gateway_bench(
    *, clients: Sequence[int] = (1, 4, 8), families: Sequence[str] = FAMILIES,
    latency_ms: float = 10.0, seconds: float = 5.0, payload: str = "small",
    action_shape: str = "10x7", max_wait_ms: float = 5.0, settings: RedisSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Aggregate steps/s and p50 for each family, path (gateway, peer) and client count."""
    from arena_eval.benchmarks import openpi_venv

    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ArenaEvalError(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    settings = settings or RedisSettings.from_env()
    args = _Args(seconds, latency_ms, action_shape, payload)
    out: dict[str, Any] = {
        "latency_ms": latency_ms, "seconds": seconds, "payload": payload,
        "action_shape": action_shape, "max_wait_ms": max_wait_ms, "families": {}, "notes": [],
    }  # fmt: skip
    say = progress or (lambda _text: None)
    for family in families:
        with ExitStack() as stack:
            pool, env = stack.enter_context(
                _pool(settings, latency_ms, action_shape, max(clients), max_wait_ms)
            )
            if family == "openpi":
                try:
                    venv = openpi_venv.ensure()
                except openpi_venv.VenvUnavailable as exc:
                    out["notes"].append(f"openpi skipped: {exc}")
                    continue
                if not venv.has_server:
                    out["notes"].append("openpi-server did not install: no openpi peer figures")
                paths = _family_openpi(stack, pool, env, args, str(venv.python), venv.has_server)
            else:
                paths = _family_zmq(stack, pool, env, args)
            rows = []
            for n in clients:
                row: dict[str, Any] = {"clients": n}
                for path, argv_for in paths.items():
                    say(f"{family}: {n} client(s) -> {path}")
                    row[path] = _run_clients(argv_for, n, seconds)
                if "peer" in row:
                    row["throughput_ratio"] = round(
                        row["gateway"]["steps_per_s"] / max(row["peer"]["steps_per_s"], 1e-9), 2
                    )
                    row["p50_added_ms"] = round(row["gateway"]["p50_ms"] - row["peer"]["p50_ms"], 3)
                rows.append(row)
            out["families"][family] = rows
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"fixed-cost model {result['latency_ms']:g} ms, chunk {result['action_shape']}, payload "
        f"{result['payload']}, pool max wait {result['max_wait_ms']:g} ms, "
        f"{result['seconds']:g} s per point",
        f"{'family':<7} {'N':>2} {'gateway steps/s':>16} {'peer steps/s':>13} {'ratio':>6} "
        f"{'gw p50 ms':>10} {'peer p50 ms':>12} {'added p50':>10}",
    ]
    for family, rows in result["families"].items():
        for row in rows:
            peer = row.get("peer") or {}
            lines.append(
                f"{family:<7} {row['clients']:>2} {row['gateway']['steps_per_s']:>16.0f} "
                f"{peer.get('steps_per_s', float('nan')):>13.0f} "
                f"{row.get('throughput_ratio', float('nan')):>5.2f}x "
                f"{row['gateway']['p50_ms']:>10.2f} {peer.get('p50_ms', float('nan')):>12.2f} "
                f"{row.get('p50_added_ms', float('nan')):>+10.2f}"
            )
    lines.extend(f"note: {n}" for n in result["notes"])
    lines.append("targets: ratio >= 4x at 8 clients; added p50 <= 1 ms at 1 client (loopback)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "seed-server":
        seed_rep_server(int(argv[1]), float(argv[2]), int(argv[3]), int(argv[4]))
        return
    if argv and argv[0] == "seed-client":
        seed_req_client(argv[1], float(argv[2]), float(argv[3]), argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--payload", choices=("small", "libero"), default="small")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    ns = parser.parse_args(argv)
    result = run_gateway_bench(
        clients=[int(c) for c in ns.clients.split(",")], families=ns.family or FAMILIES,
        latency_ms=ns.latency_ms, seconds=ns.seconds, payload=ns.payload,
        max_wait_ms=ns.max_wait_ms,
        progress=lambda text: print(text, file=sys.stderr),
    )  # fmt: skip
    print(format_table(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

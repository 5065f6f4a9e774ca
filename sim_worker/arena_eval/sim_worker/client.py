"""PolicyClient: a simulation process's handle on a remote model pool.

One ``infer`` call is one round trip. The request and the blocking read of the
client's own reply stream go out in a single write, so the fabric costs one
client<->Redis round trip per request, like a direct socket. The commands and
the parsing of what comes back are the broker's (``broker/transport.py``): this
module decides *when* to send, resend, wait and give up, never how a command
or a reply looks on the wire. Large payloads take the same-host shared-memory
path when a worker of the pool runs on this host (``broker/shm.py``);
otherwise they travel inline through Redis, lz4-compressed when that pays.

Failure handling, all inside ``infer``:

* observations are checked against the pool spec *before* sending
  (``SpecMismatch``);
* connection errors reconnect with backoff and resend the same request id
  until the timeout (a Redis restart is a pause);
* replies whose request id is not the one awaited (duplicates after a worker
  crash and reclaim, answers to abandoned requests) are dropped;
* if the shared-memory route loses its last local worker, the request is
  resent inline to the whole pool;
* a worker's error reply raises ``RemotePolicyError`` with its reason.

A PolicyClient is not thread-safe: use one per thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from arena_eval.broker import codec, telemetry, transport
from arena_eval.broker.chain import open_chain
from arena_eval.broker.connection import connect, connection_kwargs
from arena_eval.broker.constants import F_DATA, F_OBS, F_SHM, KIND_ERROR
from arena_eval.broker.errors import ArenaEvalError, BrokerUnavailable
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import wait_for_pool
from arena_eval.broker.protocol import InferRequest, decode_reply
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.broker.wire import Arg
from arena_eval.sim_worker.payload_route import PayloadRoute

#: A reply read may take its BLOCK time plus this before the link counts as dead.
_READ_MARGIN_S = 2.0


class PolicyTimeout(ArenaEvalError):
    """No answer from the pool within the timeout."""


class PolicyInterrupted(ArenaEvalError):
    """The caller's ``should_stop`` said to give up waiting (a stop signal, a cancelled job)."""


class RemotePolicyError(ArenaEvalError):
    """A policy worker answered with an error (bad input, or the policy raised)."""


def _never() -> bool:
    return False


_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class PolicyClient:
    """Send observation batches to a pool; get ``(B, H, A)`` action chunks back."""

    def __init__(
        self,
        pool: str,
        settings: RedisSettings | None = None,
        *,
        client: redis.Redis | None = None,
        timeout_s: float = 30.0,
        transport: str = "auto",
        compression: str | None = None,
        handshake: bool = True,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if transport not in ("auto", "redis", "shm"):
            raise ArenaEvalError(f"transport must be auto, redis or shm, not {transport!r}")
        self.pool = pool
        self.settings = settings or RedisSettings.from_env()
        self.keys = Keys(self.settings.prefix)
        self._r = client if client is not None else connect(self.settings)
        self.timeout_s = timeout_s
        #: Polled at least once a second while waiting for an answer; True -> PolicyInterrupted.
        self.should_stop = should_stop or _never
        self.transport = transport
        self.compression = compression or _default_compression(self._r)
        self.client_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.reply_key = self.keys.reply_stream(self.client_id)
        self._last_reply_id: bytes = b"0-0"
        self._conn = open_chain(self._r)
        #: Shared memory, a blob keyed by rollout, or inline (``payload_route.py``).
        self.route = PayloadRoute(self._r, self.keys, pool, self.client_id, transport)
        self.spec: PolicySpec | None = None
        self.last_timing: dict[str, float] = {}
        #: The per-row info dicts of the last reply, when the policy gave them.
        self.last_infos: list[dict[str, Any]] | None = None
        self.duplicates_dropped = 0
        self.requests_sent = 0
        #: When the last answer came back (perf_counter); the next request's ``think_ms``
        #: is measured from it, so the pool can tell when this client will ask again.
        self._answered_at: float | None = None
        if handshake:
            self.connect()

    # -- handshake -----------------------------------------------------------
    def connect(self) -> PolicySpec:
        """Fetch and cache the pool's spec; raise PoolNotFound if no worker serves it."""
        spec, workers = wait_for_pool(self._r, self.keys, self.pool, self.timeout_s)
        self.spec = spec
        self.route.note_workers(workers)
        return spec

    # -- inference -------------------------------------------------------------
    def infer(
        self,
        obs: Mapping[str, np.ndarray],
        episode_ids: Sequence[str | int],
        *,
        steps: int | Sequence[int] | np.ndarray | None = None,
        starts: bool | Sequence[bool] | np.ndarray | None = None,
        tasks: str | Sequence[str] = "",
        instructions: str | Sequence[str] = "",
    ) -> np.ndarray:
        """Actions ``(B, H, A)`` for ``B`` observation rows, in one round trip.

        Each row's context travels with it: ``steps`` (its step in the
        episode), ``starts`` (the episode just started), ``tasks`` and
        ``instructions`` -- each one value per row, or one value for all rows.
        A pool whose spec ``needs_instruction`` gets no row without one
        (``MissingInstruction``, before anything is sent). Per-row info dicts
        the policy returned are in ``last_infos`` afterwards (else None).
        """
        spec = self.spec or self.connect()
        rows = spec.check_observations(obs)
        if len(episode_ids) != rows:
            raise SpecMismatch(f"{len(episode_ids)} episode ids for {rows} observation rows")
        task_list = _per_row(tasks, rows, "tasks")
        instruction_list = _per_row(instructions, rows, "instructions")
        spec.check_instructions(instruction_list)
        t0 = time.perf_counter()
        now = time.time()
        request = InferRequest(
            rid=uuid.uuid4().hex,
            client=self.client_id,
            episode_ids=[str(e) for e in episode_ids],
            steps=_row_values(steps, rows, np.int64, "steps"),
            starts=_row_values(starts, rows, np.bool_, "starts"),
            tasks=task_list,
            instructions=instruction_list,
            obs=dict(obs),
            sent=now,
            deadline=now + self.timeout_s,
            think_ms=-1.0 if self._answered_at is None else (t0 - self._answered_at) * 1e3,
        )
        self._answered_at = None  # set again by an answer: after a failure there is no think time
        parts, nbytes = codec.dumps_parts(request.to_message(), compression=self.compression)
        t_encoded = time.perf_counter()
        payload = self.route.choose(parts, nbytes)
        reply = self._round_trip(request.rid, payload, parts, nbytes)
        t_done = self._answered_at = time.perf_counter()
        actions = reply["actions"]
        expected = (rows, *spec.action_shape)
        if not isinstance(actions, np.ndarray) or actions.shape != expected:
            got = getattr(actions, "shape", type(actions).__name__)
            raise RemotePolicyError(f"pool returned actions of shape {got}, expected {expected}")
        infos = reply.get("infos")
        if infos is not None and (not isinstance(infos, list) or len(infos) != rows):
            raise RemotePolicyError(f"pool returned infos that are not one dict per row: {infos!r}")
        self.last_infos = infos
        timing = {k: float(v) for k, v in (reply.get("timing") or {}).items()}
        timing.update(
            encode_client_ms=(t_encoded - t0) * 1e3,
            round_trip_ms=(t_done - t0) * 1e3,
            request_bytes=float(nbytes),
        )
        self.last_timing = timing
        telemetry.round_trip(self.pool, t_done - t0)
        return actions

    def begin_rollout(self, name: str) -> None:
        """Large requests from now on are blobs of rollout ``name`` (its own hash tag: a
        fleet's bytes spread over a cluster's shards)."""
        self.route.begin_rollout(name)

    def _round_trip(
        self, rid: str, payload: tuple[bytes, Arg, str], parts: list[Any], nbytes: int
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        field, value, stream = payload
        send = True
        backoff = 0.02
        last_progress = time.monotonic()
        while True:
            if self.should_stop():
                raise PolicyInterrupted(f"stopped waiting for pool {self.pool!r} (request {rid})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                telemetry.client_outcome(self.pool, "expired")
                raise PolicyTimeout(
                    f"no answer from pool {self.pool!r} within {self.timeout_s:.1f} s "
                    f"(request {rid}). Check `arena-eval pools` for live workers and their load."
                )
            block_ms = max(1, int(min(remaining, 1.0) * 1000))
            commands: list[list[Arg]] = []
            first: list[list[Arg]] = []  # the observation entry, before its ticket
            if send:
                sent_value = value
                if field == F_OBS:
                    first, sent_value = self.route.blob_commands(value)
                commands.append(
                    transport.request_command(stream, rid, self.reply_key, field, sent_value)
                )
            commands.append(
                transport.reply_read_command(self.reply_key, self._last_reply_id, block_ms)
            )
            try:
                # BLOCK is already capped by the deadline; the margin only runs out on a dead link
                read_timeout = block_ms / 1000.0 + _READ_MARGIN_S
                if first and self.route.blob_first:
                    # a cluster may hold the blob and its ticket on two nodes: blob first
                    for reply in self._conn.run(first, timeout_s=read_timeout):
                        if isinstance(reply, ResponseError):
                            raise ArenaEvalError(f"Redis refused the request's blob: {reply}")
                    first = []
                results = self._conn.run(first + commands, timeout_s=read_timeout)
                results = results[len(first) :]
            except _CONNECTION_ERRORS as exc:
                self._conn.drop()
                if time.monotonic() + backoff >= deadline:
                    raise BrokerUnavailable(
                        f"lost Redis at {self.settings.masked_url()} and could not reconnect "
                        f"within {self.timeout_s:.1f} s: {exc}"
                    ) from None
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                send = True  # the request may not have been persisted: resend, same rid
                continue
            backoff = 0.02
            if send:
                self.requests_sent += 1
                if isinstance(results[0], ResponseError):
                    raise ArenaEvalError(f"Redis refused the request: {results[0]}")
                send = False
            found = self._match(rid, results[-1])
            if found is not None:
                return found
            if time.monotonic() - last_progress >= 1.0:
                last_progress = time.monotonic()
                if field == F_SHM and not self.route.local_alive():
                    # The local worker died with our ticket: let the whole pool have it.
                    field, value, stream = self.route.inline_or_blob(parts, nbytes)
                    send = True

    def _match(self, rid: str, response: Any) -> dict[str, Any] | None:
        if isinstance(response, ResponseError):
            raise ArenaEvalError(f"Redis error while waiting for the reply: {response}")
        found: dict[str, Any] | None = None
        for entry in transport.parse_entries(response):
            self._last_reply_id = entry.entry_id
            data = entry.fields.get(F_DATA)
            if not isinstance(data, bytes):
                continue
            try:
                msg = decode_reply(data)
            except ArenaEvalError:
                continue
            if msg["rid"] != rid or found is not None:
                self.duplicates_dropped += 1
                continue
            if msg["kind"] == KIND_ERROR:
                telemetry.client_outcome(self.pool, "error")
                raise RemotePolicyError(
                    f"pool {self.pool!r} worker {msg.get('worker', '?')}: {msg.get('error')}"
                )
            found = msg
        return found

    def close(self) -> None:
        """Release the connection, delete the reply stream and the shm slots."""
        self.route.close()
        # Best effort, bounded: the reply stream expires on its own if Redis is unreachable.
        with contextlib.suppress(Exception):
            command = transport.delete_reply_stream_command(self.reply_key)
            self._conn.run([command], timeout_s=1.0)
        self._conn.release()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _per_row(value: str | Sequence[str], rows: int, name: str) -> list[str]:
    """One string per row: a str applies to all rows (a list multiply, no Python loop)."""
    if isinstance(value, str):
        return [value] * rows
    out = list(value)
    if len(out) != rows:
        raise SpecMismatch(f"{len(out)} {name} for {rows} observation rows")
    if out and not set(map(type, out)) <= {str}:
        raise SpecMismatch(f"{name} must be strings (UTF-8 text)")
    return out


def _row_values(
    value: Any, rows: int, dtype: type[np.int64] | type[np.bool_], name: str
) -> list[Any]:
    """Per-row ints or bools as a plain list (msgpack ints/bools); a scalar applies to all rows."""
    if value is None:
        return []  # the default for every row, sent as an empty list
    arr = np.asarray(value)
    if arr.ndim == 0:
        return [arr.astype(dtype).item()] * rows
    if arr.shape != (rows,):
        raise SpecMismatch(f"{name} has shape {list(arr.shape)}, expected one per row ({rows})")
    out: list[Any] = arr.astype(dtype, copy=False).tolist()
    return out


def _default_compression(r: redis.Redis) -> str:
    """lz4 pays across a network, not on loopback or a unix socket (see benchmarks)."""
    kwargs = connection_kwargs(r)
    host = str(kwargs.get("host", ""))
    if kwargs.get("path") or host in ("127.0.0.1", "localhost", "::1"):
        return codec.Compression.OFF.value
    return codec.Compression.AUTO.value

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

from arena_eval.broker import codec, shm, shm_trust, telemetry, transport
from arena_eval.broker.chain import open_chain
from arena_eval.broker.cluster import is_cluster
from arena_eval.broker.connection import connect, connection_kwargs
from arena_eval.broker.constants import F_DATA, F_OBS, F_SHM, KIND_ERROR
from arena_eval.broker.errors import ArenaEvalError, BrokerUnavailable
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers, wait_for_pool
from arena_eval.broker.protocol import InferRequest, decode_reply
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.broker.wire import Arg, Parts

#: Requests at least this large use shared memory when a local worker exists.
SHM_MIN_BYTES = 64 * 1024
_ROUTE_REFRESH_S = 1.0
#: A reply read may take its BLOCK time plus this before the link counts as dead.
_READ_MARGIN_S = 2.0
_SLOTS = 2


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
        self._request_stream = self.keys.pool_requests(pool)
        self._host_id = shm_trust.host_id()
        self._host_stream = self.keys.pool_host_requests(pool, self._host_id)
        self._last_reply_id: bytes = b"0-0"
        self._conn = open_chain(self._r)
        self._slots: list[shm.SlotWriter] = []
        #: Large requests go through the rollout's observation stream (cluster: by default).
        self._obs_streams = _obs_mode(self._r)
        self._rollout = "0"
        self._obs_used: set[str] = set()
        self._obs_last = (0, 0)
        self._split_phases = is_cluster(self._r)
        self._slot_turn = 0
        self._route_checked = 0.0
        self._local_worker = False
        self.spec: PolicySpec | None = None
        self.last_timing: dict[str, float] = {}
        #: The per-row info dicts of the last reply, when the policy gave them.
        self.last_infos: list[dict[str, Any]] | None = None
        self.duplicates_dropped = 0
        self.requests_sent = 0
        if handshake:
            self.connect()

    # -- handshake -----------------------------------------------------------
    def connect(self) -> PolicySpec:
        """Fetch and cache the pool's spec; raise PoolNotFound if no worker serves it."""
        spec, workers = wait_for_pool(self._r, self.keys, self.pool, self.timeout_s)
        self.spec = spec
        self._note_workers(workers)
        return spec

    def _note_workers(self, workers: Sequence[Any]) -> None:
        self._local_worker = any(w.host_id == self._host_id for w in workers)
        self._route_checked = time.monotonic()

    def _use_shm(self, nbytes: int) -> bool:
        if self.transport == "redis" or not shm_trust.available():
            return False
        if self.transport == "shm":
            return True
        if nbytes < SHM_MIN_BYTES:
            return False
        if time.monotonic() - self._route_checked > _ROUTE_REFRESH_S:
            self._note_workers(live_workers(self._r, self.keys, self.pool))
        return self._local_worker

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
        )
        parts, nbytes = codec.dumps_parts(request.to_message(), compression=self.compression)
        t_encoded = time.perf_counter()
        payload = self._payload_field(parts, nbytes)
        reply = self._round_trip(request.rid, payload, parts, nbytes)
        t_done = time.perf_counter()
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
        """Large requests from now on go to rollout ``name``'s observation stream (its own
        hash tag: a fleet's bytes spread over a cluster's shards); the last one's is deleted."""
        self.keys.rollout_obs(self.client_id, name)  # validates the name
        self._drop_obs_streams()
        self._rollout = name

    def end_rollout(self) -> None:
        """The rollout is over: delete its observation stream (best effort; it expires)."""
        self._drop_obs_streams()

    def _drop_obs_streams(self) -> None:
        used, self._obs_used = self._obs_used, set()
        if used:
            with contextlib.suppress(Exception):  # best effort: they expire anyway
                self._conn.run([["DEL", key] for key in sorted(used)], timeout_s=1.0)

    def _obs_entry_id(self) -> str:
        """A new entry id of our own, increasing (the stream is only ours)."""
        ms = max(int(time.time() * 1000), self._obs_last[0])
        seq = self._obs_last[1] + 1 if ms == self._obs_last[0] else 0
        self._obs_last = (ms, seq)
        return f"{ms}-{seq}"

    def _obs_commands(self, value: Arg) -> tuple[list[list[Arg]], str]:
        """The commands that put a payload on the rollout's stream, and the ticket to send."""
        key = self.keys.rollout_obs(self.client_id, self._rollout)
        self._obs_used.add(key)
        entry_id = self._obs_entry_id()
        return transport.obs_commands(key, entry_id, value), transport.obs_ticket(key, entry_id)

    def _payload_field(self, parts: list[Any], nbytes: int) -> tuple[bytes, Arg, str]:
        """(field name, value, stream) for the request: a shm ticket or the inline bytes
        (``obs``: the bytes, which ``_round_trip`` puts on the rollout's stream)."""
        if self._use_shm(nbytes):
            if not self._slots:
                self._slots = [shm.SlotWriter(self.client_id, i) for i in range(_SLOTS)]
            slot = self._slots[self._slot_turn % _SLOTS]
            self._slot_turn += 1
            ticket = slot.write(parts, nbytes)
            return (F_SHM, ticket.to_wire(), self._host_stream)
        if self._obs_streams and nbytes >= _obs_min_bytes():
            return (F_OBS, Parts(parts, nbytes), self._request_stream)
        return (F_DATA, Parts(parts, nbytes), self._request_stream)

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
                    first, sent_value = self._obs_commands(value)
                commands.append(
                    transport.request_command(stream, rid, self.reply_key, field, sent_value)
                )
            commands.append(
                transport.reply_read_command(self.reply_key, self._last_reply_id, block_ms)
            )
            try:
                # BLOCK is already capped by the deadline; the margin only runs out on a dead link
                read_timeout = block_ms / 1000.0 + _READ_MARGIN_S
                if first and self._split_phases:
                    # a cluster may hold the entry and its ticket on two nodes: entry first
                    for reply in self._conn.run(first, timeout_s=read_timeout):
                        if isinstance(reply, ResponseError):
                            raise ArenaEvalError(f"Redis refused the observation entry: {reply}")
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
                if field == F_SHM and not self._local_alive():
                    # The local worker died with our ticket: let the whole pool have it.
                    field, value, stream = F_DATA, Parts(parts, nbytes), self._request_stream
                    send = True

    def _local_alive(self) -> bool:
        self._note_workers(live_workers(self._r, self.keys, self.pool))
        return self._local_worker

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
        """Release the connection, delete the reply stream, observation streams, shm slots."""
        for slot in self._slots:
            slot.close()
        self._slots = []
        self._drop_obs_streams()
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


#: Observation streams: ``on``, ``off`` or ``auto`` (on a cluster only; docs/architecture.md).
ENV_OBS_STREAMS = "ARENA_OBS_STREAMS"
#: Requests of at least this many bytes use the observation stream when it is on.
ENV_OBS_STREAM_MIN_BYTES = "ARENA_OBS_STREAM_MIN_BYTES"
OBS_STREAM_MIN_BYTES = 64 * 1024


def _obs_mode(r: redis.Redis) -> bool:
    mode = os.environ.get(ENV_OBS_STREAMS, "auto").strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ArenaEvalError(f"{ENV_OBS_STREAMS} must be auto, on or off, not {mode!r}")
    return mode == "on" or (mode == "auto" and is_cluster(r))


def _obs_min_bytes() -> int:
    raw = os.environ.get(ENV_OBS_STREAM_MIN_BYTES, "")
    return int(raw) if raw.isdigit() else OBS_STREAM_MIN_BYTES


def _default_compression(r: redis.Redis) -> str:
    """lz4 pays across a network, not on loopback or a unix socket (see benchmarks)."""
    kwargs = connection_kwargs(r)
    host = str(kwargs.get("host", ""))
    if kwargs.get("path") or host in ("127.0.0.1", "localhost", "::1"):
        return codec.Compression.OFF.value
    return codec.Compression.AUTO.value

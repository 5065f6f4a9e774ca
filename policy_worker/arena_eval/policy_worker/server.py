"""The policy worker: read, batch, infer, reply, ack, reclaim.

One worker is one consumer in the pool's consumer group. It reads requests
from every sim node, waits at most ``max_wait_ms`` after the first one to
gather up to ``max_batch`` rows, runs **one** ``policy.infer`` on the whole
batch, splits the ``(B, H, A)`` chunks back per request, and sends all the
replies plus the XACK/XDEL in one pipelined round trip.

``max_batch`` caps *rows* per ``policy.infer`` call, never requests: it is
what a model's memory is sized for. A request that would push the batch past
the cap waits, first in line, for the next batch (``batching.take_rows``);
one request larger than the cap alone is split into calls of at most
``max_batch`` rows whose outputs are concatenated (splitting, not refusing:
the sim asked for a legal batch, and rows are independent to the serve loop).

Failure semantics (each has a test):

* A request left pending by a dead worker is taken over with XAUTOCLAIM once
  it has been idle ``claim_idle_ms``; a request delivered more than
  ``max_deliveries`` times goes to the dead-letter stream and its requester
  gets an error reply.
* Bad input never stops the worker: an undecodable entry, a spec mismatch or
  an exception in ``infer`` each produce a dead letter (with the reason and
  the original fields) and an error reply where there is a requester. When a
  batched ``infer`` raises, each request is retried alone so that one bad
  request does not fail its neighbours.
* ``stop()`` (SIGTERM/SIGINT in the CLI) lets the batch in flight finish and
  be answered, then deregisters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from arena_eval.broker import codec, pool, shm, shm_trust, streams
from arena_eval.broker.connection import connect
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.fields import as_text
from arena_eval.broker.keys import POLICY_GROUP, Keys
from arena_eval.broker.protocol import (
    F_DATA,
    F_REPLY,
    F_RID,
    F_SHM,
    InferRequest,
    actions_reply,
    error_reply,
)
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec
from arena_eval.broker.wire import Arg, DedicatedConnection, execute_chain
from arena_eval.policy_worker.batching import infer_capped, read_count, take_rows, total_rows
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.entries import (
    Pending,
    dead_letter_command,
    delivery_counts,
    reply_commands,
)
from arena_eval.policy_worker.entries import rows as entry_rows
from arena_eval.policy_worker.identity import identify
from arena_eval.policy_worker.policy import Policy
from arena_eval.policy_worker.registry import load_policy
from arena_eval.policy_worker.stats import WorkerStats

log = logging.getLogger("arena_eval.policy_worker")

_POLL_S = 0.0002
_READ_MARGIN_S = 5.0
_SWEEP_S = 60.0
_DEFAULTS = PolicyWorkerConfig  # field defaults, read as class attributes


class PolicyWorker:
    """Serve one pool with one policy until ``stop()``."""

    def __init__(
        self,
        pool_name: str,
        policy: Policy,
        settings: RedisSettings | None = None,
        *,
        client: redis.Redis | None = None,
        max_batch: int = _DEFAULTS.max_batch,
        max_wait_ms: float = _DEFAULTS.max_wait_ms,
        claim_idle_ms: int = _DEFAULTS.claim_idle_ms,
        max_deliveries: int = _DEFAULTS.max_deliveries,
        worker_id: str | None = _DEFAULTS.worker_id,
        block_ms: int = _DEFAULTS.block_ms,
        hung_after_s: float = _DEFAULTS.hung_after_s,
        policy_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Serve a ``policy`` instance on ``pool_name``; defaults: ``PolicyWorkerConfig``'s."""
        self.config = PolicyWorkerConfig(
            pool=pool_name,
            policy=f"{type(policy).__module__}:{type(policy).__qualname__}",
            policy_args={str(k): str(v) for k, v in (policy_args or {}).items()},
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            claim_idle_ms=claim_idle_ms,
            max_deliveries=max_deliveries,
            worker_id=worker_id,
            block_ms=block_ms,
            hung_after_s=hung_after_s,
            redis=settings,
        )
        self.pool = pool_name
        self.policy = policy
        self.settings = settings or RedisSettings.from_env()
        self.keys = Keys(self.settings.prefix)
        self._r = client if client is not None else connect(self.settings)
        self._hb_r = redis.Redis(connection_pool=self._r.connection_pool)
        # XAUTOCLAIM replies differ between Redis 6.2 and 7; streams.autoclaim parses them.
        self._raw = streams.raw_client(self._r)
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.block_ms = block_ms
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.host_id = shm_trust.host_id()
        # the arguments it was built with feed its identity, unless it declares its own
        self.spec: PolicySpec = identify(policy, policy_args)
        self.streams = [
            self.keys.pool_requests(pool_name),
            self.keys.pool_host_requests(pool_name, self.host_id),
        ]
        self.dead_stream = self.keys.pool_dead(pool_name)
        self.stats = WorkerStats()
        self._reader = shm.SlotReader()
        self._stop = threading.Event()
        self._next_claim = 0.0
        self._next_sweep = time.monotonic() + _SWEEP_S
        self._recent_clients: dict[str, float] = {}
        self._conn = DedicatedConnection(self._r)
        self._prefetched: list[Pending] | None = None
        # read, decoded and pending on us, but beyond the row cap: first in the next batch
        self._carry: list[Pending] = []
        self._rows_per_request = 1
        self._busy: tuple[float, list[Pending]] | None = None
        self.hung_after_s = hung_after_s
        self._hb_thread: threading.Thread | None = None
        self._registered = False

    @classmethod
    def from_config(
        cls,
        config: PolicyWorkerConfig,
        *,
        policy: Policy | None = None,
        client: redis.Redis | None = None,
    ) -> PolicyWorker:
        """A worker built from ``config``; the policy is loaded by name unless one is given."""
        args = dict(config.policy_args)
        if policy is None:
            if config.policy == "torch":
                args.setdefault("device", config.device)
            policy = load_policy(config.policy, args)
        worker = cls(
            config.pool,
            policy,
            config.settings,
            client=client,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            claim_idle_ms=config.claim_idle_ms,
            max_deliveries=config.max_deliveries,
            worker_id=config.worker_id,
            block_ms=config.block_ms,
            hung_after_s=config.hung_after_s,
            policy_args=args,
        )
        worker.config = config
        return worker

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def register(self) -> None:
        pool.register(self._r, self.keys, self.pool, self.worker_id, self.spec)
        for stream in self.streams:
            streams.ensure_group(self._r, stream, POLICY_GROUP)
        self._heartbeat()
        self._registered = True
        shm.sweep_orphans()
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, daemon=True)
        self._hb_thread.start()

    def deregister(self) -> None:
        if self._hb_thread is not None:  # a late heartbeat must not re-create our key
            self._stop.set()
            self._hb_thread.join(5)
        if self._registered:
            with contextlib.suppress(Exception):
                pool.deregister(self._hb_r, self.keys, self.pool, self.worker_id)
            for stream in self.streams:  # leave the groups, unless we still hold entries
                with contextlib.suppress(Exception):
                    mine = self._r.xpending_range(
                        stream, POLICY_GROUP, min="-", max="+", count=1, consumername=self.worker_id
                    )
                    if not mine:
                        self._r.xgroup_delconsumer(stream, POLICY_GROUP, self.worker_id)
            self._registered = False

    def run(self, *, max_batches: int | None = None, burst: bool = False) -> WorkerStats:
        """Serve until stopped; ``burst`` returns once the streams are empty (tests).

        Registers first unless ``register()`` was already called (the CLI
        does, so that it says "serving" only once the pool accepted it).
        """
        if not self._registered:
            self.register()
        try:
            while not self._stop.is_set():
                if max_batches is not None and self.stats.batches >= max_batches:
                    break
                served = self.serve_once()
                if burst and not served:
                    break
        finally:
            self._stop.set()
            leftover = self._carry + (self._prefetched or [])
            self._carry, self._prefetched = [], None
            while leftover:  # read just before the stop: answer them rather than strand them
                batch, leftover = take_rows(leftover, self.max_batch)
                with contextlib.suppress(Exception):
                    self._handle(batch)
            self.deregister()
            self.close()
        return self.stats

    def close(self) -> None:
        """Release the connection and the policy (its model memory); ``run`` ends with this."""
        self._conn.drop()
        self.policy.close()

    def serve_once(self) -> int:
        """Read and answer at most one batch; return the number of requests handled."""
        try:
            if time.monotonic() >= self._next_sweep:  # slots of crashed clients on this host
                self._next_sweep = time.monotonic() + _SWEEP_S
                shm.sweep_orphans()
            queued = self._carry + (self._prefetched or [])
            self._carry, self._prefetched = [], None
            items = self._gather(queued + self._reclaim_due())
            items, self._carry = take_rows(items, self.max_batch)
            if items:
                self._prefetched = self._handle(items)
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
            log.warning("lost Redis (%s); reconnecting", exc)
            self._conn.drop()
            time.sleep(0.2)
            return 0
        except ResponseError as exc:
            if streams.group_lost(exc):
                log.warning("request stream or group vanished (%s); recreating", exc)
                self._prefetched, self._carry = None, []
                for stream in self.streams:
                    streams.ensure_group(self._r, stream, POLICY_GROUP)
                pool.register(self._r, self.keys, self.pool, self.worker_id, self.spec)
                return 0
            raise
        return len(items)

    # -- reading -------------------------------------------------------------
    def _read_command(self, count: int, block_ms: int | None) -> list[Arg]:
        cmd: list[Arg] = ["XREADGROUP", "GROUP", POLICY_GROUP, self.worker_id, "COUNT", count]
        if block_ms is not None:
            cmd += ["BLOCK", block_ms]
        return [*cmd, "STREAMS", *self.streams, *([">"] * len(self.streams))]

    def _read(self, count: int, block_ms: int | None) -> list[Pending]:
        (resp,) = execute_chain(
            self._conn.get(),
            [self._read_command(count, block_ms)],
            timeout_s=_read_timeout(block_ms),
        )
        return self._parse_read(resp)

    def _parse_read(self, resp: Any) -> list[Pending]:
        if isinstance(resp, ResponseError):
            raise resp
        now = time.time()
        out = []
        streams = resp.items() if isinstance(resp, dict) else (resp or [])  # RESP3 / RESP2
        for stream, entries in streams:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            for entry_id, flat in entries:
                fields = dict(zip(flat[::2], flat[1::2], strict=False)) if flat else {}
                out.append(self._decode(Pending(name, entry_id, fields, now)))
        return out

    def _read_count(self, rows_in_hand: int) -> int:
        return read_count(self.max_batch, rows_in_hand, self._rows_per_request)

    def _gather(self, queued: list[Pending] | None = None) -> list[Pending]:
        """Requests for one batch: ``queued`` ones first, then reads while rows fit the cap."""
        items = queued if queued else self._read(self._read_count(0), self.block_ms)
        if not items:
            return items
        rows = total_rows(items)
        now = time.monotonic()
        deadline = now + self.max_wait_ms / 1000.0
        clients = self._note_clients(items, now)
        expected = self._expected_clients(now)
        # Redis only expires a BLOCK timeout on its next cron tick (up to 1000/hz ms,
        # 100 ms by default), so the batching window polls without BLOCK instead.
        # It also stops waiting as soon as every recently active client has a
        # request in the batch: nobody else is coming, so waiting is pure latency.
        while rows < self.max_batch and len(clients) < expected and not self._stop.is_set():
            more = self._read(self._read_count(rows), None)
            if more:
                items.extend(more)
                rows += total_rows(more)
                clients |= self._note_clients(more, time.monotonic())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, _POLL_S))
        return items

    def _note_clients(self, items: list[Pending], now: float) -> set[str]:
        seen = {p.request.client for p in items if p.request is not None}
        for client in seen:
            self._recent_clients[client] = now
        return seen

    def _expected_clients(self, now: float) -> int:
        """How many clients sent requests within the last second (at least 1)."""
        horizon = now - self.config.active_client_s
        stale = [c for c, t in self._recent_clients.items() if t < horizon]
        for c in stale:
            del self._recent_clients[c]
        return max(1, len(self._recent_clients))

    def _decode(self, p: Pending) -> Pending:
        t0 = time.perf_counter()
        p.rid = as_text(p.fields.get(F_RID))
        p.reply = as_text(p.fields.get(F_REPLY))
        try:
            if p.reply and not self.keys.is_reply_stream(p.reply):
                bad, p.reply = p.reply, ""  # never write to a key a request merely names
                raise ArenaEvalError(f"reply key {bad[:200]!r} is not a client reply stream")
            if F_SHM in p.fields:
                # A ticket may only name a slot written by the client it answers to.
                owner = self.keys.reply_stream_client(p.reply) if p.reply else None
                if owner is None:
                    raise ArenaEvalError("a shared-memory ticket needs its client's reply stream")
                p.ticket = shm.Ticket.from_wire(p.fields[F_SHM], client=owner)
                payload: Any = self._reader.view(p.ticket)
            elif F_DATA in p.fields:
                payload = p.fields[F_DATA]
            else:
                raise ArenaEvalError(
                    f"entry has no payload field (fields: {sorted(as_text(k) for k in p.fields)})"
                )
            request = InferRequest.from_message(codec.loads(payload))
            if p.rid and request.rid != p.rid:
                raise ArenaEvalError("payload rid does not match the entry's rid field")
            rows = self.spec.check_observations(request.obs)
            if len(request.episode_ids) not in (0, rows):
                raise ArenaEvalError(
                    f"{len(request.episode_ids)} episode ids for {rows} observation rows"
                )
            p.request = request
        except ArenaEvalError as exc:
            p.error = f"{type(exc).__name__}: {exc}"
        p.decode_ms = (time.perf_counter() - t0) * 1e3
        return p

    def _reclaim_due(self) -> list[Pending]:
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + max(0.05, self.claim_idle_ms / 2000.0)
        out: list[Pending] = []
        for stream in self.streams:
            out.extend(self._reclaim(stream))
        return out

    def _reclaim(self, stream: str) -> list[Pending]:
        """XAUTOCLAIM entries idle past claim_idle_ms; dead-letter the over-delivered."""
        try:
            claimed, deleted = streams.autoclaim_scan(
                self._raw, stream, POLICY_GROUP, self.worker_id, self.claim_idle_ms, self.max_batch
            )
        except ResponseError as exc:
            if streams.group_lost(exc):
                return []
            raise
        if deleted:  # trimmed while pending: nothing to serve, just clear the PEL
            self._r.xack(stream, POLICY_GROUP, *deleted)
        if not claimed:
            return []
        counts = delivery_counts(self._r, stream, self.worker_id, [eid for eid, _ in claimed])
        now = time.time()
        out = []
        for entry_id, fields in claimed:
            p = Pending(stream, entry_id, fields or {}, now)
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.max_deliveries:
                p.rid = as_text(p.fields.get(F_RID))
                reply = as_text(p.fields.get(F_REPLY))
                p.reply = reply if self.keys.is_reply_stream(reply) else ""
                p.error = (
                    f"request delivered {deliveries} times without an answer "
                    f"(max {self.max_deliveries}): workers crashed or hung while serving it"
                )
            else:
                self._decode(p)
            out.append(p)
        self.stats.reclaimed += len(out)
        return out

    # -- serving ---------------------------------------------------------------
    def _handle(self, items: list[Pending]) -> list[Pending] | None:
        now = time.time()
        good: list[Pending] = []
        done: list[Pending] = []
        for p in items:
            if p.request is not None and p.request.deadline and p.request.deadline < now:
                self.stats.expired += 1  # the requester gave up: answering would be waste
                done.append(p)
            elif p.request is not None:
                good.append(p)
            else:
                done.append(p)
        replies: list[tuple[Pending, dict[str, Any]]] = []
        if good:
            self._busy = (time.monotonic(), good)  # the heartbeat thread renews these
            try:
                replies.extend(self._infer_batch(good))
            finally:
                self._busy = None
        return self._finish(replies, done + good)

    def _infer_batch(self, batch: list[Pending]) -> list[tuple[Pending, dict[str, Any]]]:
        try:
            actions, infer_s = self._run_policy(batch)
        except Exception as exc:
            if len(batch) > 1:  # isolate the request that breaks the policy
                out: list[tuple[Pending, dict[str, Any]]] = []
                for p in batch:
                    out.extend(self._infer_batch([p]))
                return out
            p = batch[0]
            p.error = f"policy.infer raised {type(exc).__name__}: {exc}"
            log.warning("infer failed for %s: %s", p.rid, traceback.format_exc(limit=3))
            return []
        t_enc = time.perf_counter()
        rows = sum(entry_rows(p) for p in batch)
        out = []
        offset = 0
        for p in batch:
            assert p.request is not None
            n = entry_rows(p)
            if p.ticket is not None and not self._reader.still_valid(p.ticket):
                self.stats.stale += 1  # slot rewritten under us: the client moved on
                offset += n
                continue
            timing = {
                "queue_ms": max(0.0, (p.read_at - p.request.sent) * 1e3),
                "decode_ms": p.decode_ms,
                "infer_ms": infer_s * 1e3,
                "batch_rows": float(rows),
                "batch_requests": float(len(batch)),
            }
            chunk = actions[offset : offset + n]
            offset += n
            out.append((p, actions_reply(p.rid, chunk, self.worker_id, timing)))
        encode_ms = (time.perf_counter() - t_enc) * 1e3
        for _p, msg in out:
            msg["timing"]["encode_ms"] = encode_ms
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.rows += rows
        return out

    def _run_policy(self, batch: list[Pending]) -> tuple[np.ndarray, float]:
        requests = [p.request for p in batch if p.request is not None]
        if len(requests) == 1:
            obs = requests[0].obs
        else:
            obs = {k: np.concatenate([r.obs[k] for r in requests]) for k in requests[0].obs}
        starts = [e for r in requests for e in r.starts]
        if starts:
            self.policy.reset(starts)
        rows = sum(entry_rows(p) for p in batch)
        self._rows_per_request = max(1, rows // max(1, len(requests)))
        t0 = time.perf_counter()
        actions, calls = infer_capped(self.policy.infer, obs, rows, self.max_batch)
        self.stats.infer_calls += calls
        infer_s = time.perf_counter() - t0
        self.stats.infer_s += infer_s
        expected = (rows, *self.spec.action_shape)
        if not isinstance(actions, np.ndarray) or actions.shape != expected:
            got = getattr(actions, "shape", type(actions).__name__)
            raise ArenaEvalError(f"policy returned {got}, expected {expected}")
        if actions.dtype.name != self.spec.action_dtype:
            actions = actions.astype(self.spec.action_dtype)
        return actions, infer_s

    def _finish(
        self, replies: list[tuple[Pending, dict[str, Any]]], items: list[Pending]
    ) -> list[Pending] | None:
        """Replies, dead letters, XACK and XDEL -- and the next blocking read -- in one write.

        Chaining the next XREADGROUP onto the acknowledgements saves a round
        trip per batch; its entries are returned and served next.
        """
        commands: list[list[Arg]] = []
        for p, msg in replies:
            commands += reply_commands(p.reply, msg)
        for p in items:
            if p.error is None:
                continue
            self.stats.errors += 1
            self.stats.dead_letters += 1
            commands.append(dead_letter_command(p, self.dead_stream, self.worker_id))
            if p.reply and p.rid:
                commands += reply_commands(p.reply, error_reply(p.rid, p.error, self.worker_id))
        by_stream: dict[str, list[bytes]] = {}
        for p in items:
            by_stream.setdefault(p.stream, []).append(p.entry_id)
        for stream, ids in by_stream.items():
            commands.append(["XACK", stream, POLICY_GROUP, *ids])
            commands.append(["XDEL", stream, *ids])
        # with requests carried over, the next read must not block: they are due now
        carried = total_rows(self._carry)
        read_next = not self._stop.is_set() and carried < self.max_batch
        if read_next:
            block = None if self._carry else self.block_ms
            commands.append(self._read_command(self._read_count(carried), block))
        results = execute_chain(
            self._conn.get(), commands, timeout_s=_read_timeout(self.block_ms if read_next else 0)
        )
        for result in results[:-1] if read_next else results:
            if isinstance(result, ResponseError):
                log.warning("reply/ack command failed: %s", result)
        return self._parse_read(results[-1]) if read_next else None

    # -- heartbeat -------------------------------------------------------------
    def _heartbeat(self) -> None:
        data: dict[str, Any] = {
            "worker_id": self.worker_id,
            "host": socket.gethostname(),
            "host_id": self.host_id,
            "pid": os.getpid(),
            "policy": self.spec.name,
            "policy_version": self.spec.version,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "state": "stopping" if self._stop.is_set() else "serving",
            # seconds inside the current infer call: a large value means slow or hung
            "busy_s": round(time.monotonic() - busy[0], 2) if (busy := self._busy) else 0.0,
            **self.stats.as_dict(),
        }
        pool.heartbeat(self._hb_r, self.keys, self.pool, self.worker_id, data)

    def _heartbeat_loop(self) -> None:
        tick = min(pool.HEARTBEAT_INTERVAL_S, self.claim_idle_ms / 3000.0)
        last_beat = time.monotonic()
        while not self._stop.wait(tick):
            try:
                self._renew_in_flight()
                if time.monotonic() - last_beat >= pool.HEARTBEAT_INTERVAL_S:
                    self._heartbeat()
                    last_beat = time.monotonic()
            except Exception as exc:  # Redis away: the main loop reconnects; keep trying
                log.debug("heartbeat failed: %s", exc)

    def _renew_in_flight(self) -> None:
        """Keep requests in a long ``infer`` from looking abandoned to other workers.

        XCLAIM ... JUSTID by their owner resets their idle time without counting a
        delivery, so a slow but healthy forward pass is never reclaimed and
        dead-lettered under it. After ``hung_after_s`` the worker counts as hung
        and stops renewing, so live workers can take its requests over.
        """
        busy = self._busy
        if busy is None:
            return
        since, batch = busy
        if time.monotonic() - since > self.hung_after_s:
            return
        batch = batch + self._carry  # waiting behind this batch: not abandoned either
        by_stream: dict[str, list[bytes]] = {}
        for p in batch:
            by_stream.setdefault(p.stream, []).append(p.entry_id)
        pipe = self._hb_r.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xclaim(stream, POLICY_GROUP, self.worker_id, 0, list(ids), justid=True)  # type: ignore[arg-type]
        pipe.execute(raise_on_error=False)


def _read_timeout(block_ms: int | None) -> float:
    """Socket deadline for a chain that may block ``block_ms``: a silent link fails, not hangs."""
    return (block_ms or 0) / 1000.0 + _READ_MARGIN_S

"""The policy worker's serve loop: read, batch, infer, reply, ack -- and the parts it ties.

The loop lives here; each part can be read and changed alone:
``batcher.py`` (which requests form a batch; pluggable), ``decoding.py`` (an
entry to a request, or the reason it fails), ``inference.py`` (one batch
through the policy), ``leases.py`` (reclaim and owner-checked renewal on the
pool's ``ConsumerGroup``), ``heartbeat.py`` (the background thread),
``entries.py`` (the answering commands) and ``config.py`` (every knob).

One worker is one consumer in the pool's consumer group. It reads requests
from every sim node, waits at most ``max_wait_ms`` after the first one to
gather up to ``max_batch`` rows, runs **one** ``policy.infer`` on the whole
batch, splits the ``(B, H, A)`` chunks back per request, and sends all the
replies plus the acknowledgements in one pipelined round trip.

``max_batch`` caps *rows* per ``policy.infer`` call, never requests: it is
what a model's memory is sized for. A request that would push the batch past
the cap waits, first in line, for the next batch (``batching.take_rows``);
one request larger than the cap alone is split into calls of at most
``max_batch`` rows whose outputs are concatenated (splitting, not refusing:
the sim asked for a legal batch, and rows are independent to the serve loop).

Failure semantics (each has a test):

* A request left pending by a dead worker is taken over (autoclaim) once
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
import uuid
from collections.abc import Mapping
from functools import partial
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from arena_eval.broker import pool, shm, shm_trust, streams, transport
from arena_eval.broker.chain import open_chain
from arena_eval.broker.connection import connect, twin
from arena_eval.broker.constants import POLICY_GROUP
from arena_eval.broker.consumer_group import ConsumerGroup
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker import decoding
from arena_eval.policy_worker.batcher import WindowBatcher
from arena_eval.policy_worker.batching import total_rows
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.decode_buffers import DecodeBuffers
from arena_eval.policy_worker.entries import Pending, answer_commands, by_stream
from arena_eval.policy_worker.heartbeat import Heartbeat
from arena_eval.policy_worker.identity import identify
from arena_eval.policy_worker.inference import BatchRunner, Reply
from arena_eval.policy_worker.leases import RequestLeases
from arena_eval.policy_worker.policy import Policy
from arena_eval.policy_worker.registry import load_policy
from arena_eval.policy_worker.stats import WorkerStats

log = logging.getLogger("arena_eval.policy_worker")

_READ_MARGIN_S = 5.0
_SWEEP_S = 60.0


class PolicyWorker:
    """Serve one pool with one policy until ``stop()``."""

    def __init__(
        self,
        pool_name: str,
        policy: Policy,
        settings: RedisSettings | None = None,
        *,
        client: redis.Redis | None = None,
        policy_args: Mapping[str, Any] | None = None,
        **knobs: Any,
    ) -> None:
        """Serve a ``policy`` instance on ``pool_name``.

        ``knobs`` are ``PolicyWorkerConfig`` fields (``max_batch``, ``max_wait_ms``,
        ``batcher`` ...), with its defaults; an unknown name is a TypeError.
        """
        config = PolicyWorkerConfig(
            pool=pool_name,
            policy=f"{type(policy).__module__}:{type(policy).__qualname__}",
            policy_args={str(k): str(v) for k, v in (policy_args or {}).items()},
            redis=settings,
            **knobs,
        )
        self._setup(config, policy, client, policy_args)

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
        worker = cls.__new__(cls)
        worker._setup(config, policy, client, args)
        return worker

    def _setup(
        self,
        config: PolicyWorkerConfig,
        policy: Policy,
        client: redis.Redis | None,
        policy_args: Mapping[str, Any] | None,
    ) -> None:
        self.config = config
        self.pool = config.pool
        self.policy = policy
        self.settings = config.settings
        self.keys = Keys(self.settings.prefix)
        self._r = client if client is not None else connect(self.settings)
        self._hb_r = twin(self._r)
        self.worker_id = (
            config.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.host_id = shm_trust.host_id()
        # the arguments it was built with feed its identity, unless it declares its own
        self.spec: PolicySpec = identify(policy, policy_args)
        self.streams = [
            self.keys.pool_requests(self.pool),
            self.keys.pool_host_requests(self.pool, self.host_id),
        ]
        self.dead_stream = self.keys.pool_dead(self.pool)
        self.stats = WorkerStats()
        self.group = ConsumerGroup(self._r, self.streams, POLICY_GROUP, self.worker_id)
        self.batcher = (config.batcher or WindowBatcher)(config)
        self._reader = shm.SlotReader()
        self._conn = open_chain(self._r)
        # lz4 arrays decompress into DecodeBuffers, reused; blobs are fetched on our chain
        self.decoder = decoding.Decoder(self.keys, self.spec, self._reader, self._conn,
                                        DecodeBuffers(), config.max_deliveries)  # fmt: skip
        self.leases = RequestLeases(self.group, config, admit=self.decoder.admit, stats=self.stats)
        self.runner = BatchRunner(
            policy, self.spec, worker_id=self.worker_id, max_batch=config.max_batch,
            batcher=self.batcher, leases=self.leases, reader=self._reader, stats=self.stats,
        )  # fmt: skip
        self._stop = threading.Event()
        self._next_sweep = time.monotonic() + _SWEEP_S
        self._prefetched: list[Pending] | None = None
        # read, decoded and pending on us, but beyond the row cap: first in the next batch
        self._carry: list[Pending] = []
        self._heartbeat = Heartbeat(
            self._beat,
            lambda: self.leases.renew(self._carry),
            tick_s=min(pool.HEARTBEAT_INTERVAL_S, self.config.claim_idle_ms / 3000.0),
            beat_s=pool.HEARTBEAT_INTERVAL_S,
            stop=self._stop,
        )
        self._registered = False

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def register(self) -> None:
        self.group.check_renew_allowed()  # before any write: a refusal leaves nothing behind
        pool.register(self._r, self.keys, self.pool, self.worker_id, self.spec)
        self.group.create()
        self._beat()
        self._registered = True
        shm.sweep_orphans()
        self._heartbeat.start()

    def deregister(self) -> None:
        self._stop.set()  # a late heartbeat must not re-create our key
        self._heartbeat.join(5)
        if self._registered:
            with contextlib.suppress(Exception):
                pool.deregister(self._hb_r, self.keys, self.pool, self.worker_id)
            with contextlib.suppress(Exception):
                self.group.leave()  # unless we still hold entries
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
                batch, leftover = self.batcher.take(leftover)
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
            items = queued + self.leases.reclaim_due()
            if not items:
                items = self._read(self.batcher.read_count(0), self.config.block_ms)
            if items:
                items = self.batcher.gather(
                    items, partial(self._read, block_ms=None), self._stop.is_set
                )
            items, self._carry = self.batcher.take(items)
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
                self.group.create()
                pool.register(self._r, self.keys, self.pool, self.worker_id, self.spec)
                return 0
            raise
        return len(items)

    # -- reading -------------------------------------------------------------
    def _read(self, count: int, block_ms: int | None) -> list[Pending]:
        (resp,) = self._conn.run(
            [self.group.read_command(count, block_ms)],
            timeout_s=_read_timeout(block_ms),
        )
        return self.decoder.read(resp)

    # -- answering -------------------------------------------------------------
    def _handle(self, items: list[Pending]) -> list[Pending] | None:
        replies, retire = self.runner.answer(items)
        return self._finish(replies, retire)

    def _finish(self, replies: list[Reply], items: list[Pending]) -> list[Pending] | None:
        """Replies, dead letters, acknowledgements -- and the next blocking read -- in one write.

        Chaining the next read onto the acknowledgements saves a round trip
        per batch; its entries are returned and served next.
        """
        commands, dead = answer_commands(
            replies, items, dead_stream=self.dead_stream, worker_id=self.worker_id
        )
        self.stats.errors += dead
        self.stats.dead_letters += dead
        commands += self.group.ack_delete_commands(by_stream(items))
        commands += transport.obs_delete_commands(decoding.answered_blobs(items))
        # with requests carried over, the next read must not block: they are due now
        carried = total_rows(self._carry)
        read_next = not self._stop.is_set() and carried < self.batcher.max_batch
        if read_next:
            block = None if self._carry else self.config.block_ms
            commands.append(self.group.read_command(self.batcher.read_count(carried), block))
        if (replied := getattr(self.batcher, "replied", None)) is not None:
            replied(items)  # optional hook: when clients ask again (WindowBatcher)
        timeout_s = _read_timeout(self.config.block_ms if read_next else 0)
        results = self._conn.run(commands, timeout_s=timeout_s)
        for result in results[:-1] if read_next else results:
            if isinstance(result, ResponseError):
                log.warning("reply/ack command failed: %s", result)
        if not read_next:
            return None
        return self.decoder.read(results[-1])

    # -- heartbeat -------------------------------------------------------------
    def _beat(self) -> None:
        data: dict[str, Any] = {
            "worker_id": self.worker_id,
            "host": socket.gethostname(),
            "host_id": self.host_id,
            "pid": os.getpid(),
            "policy": self.spec.name,
            "policy_version": self.spec.version,
            "max_batch": self.config.max_batch,
            "max_wait_ms": self.config.max_wait_ms,
            "state": "stopping" if self._stop.is_set() else "serving",
            # seconds inside the current infer call: a large value means slow or hung
            "busy_s": self.leases.busy_s(),
            **self.stats.as_dict(),
        }
        pool.heartbeat(self._hb_r, self.keys, self.pool, self.worker_id, data)


def _read_timeout(block_ms: int | None) -> float:
    """Socket deadline for a chain that may block ``block_ms``: a silent link fails, not hangs."""
    return (block_ms or 0) / 1000.0 + _READ_MARGIN_S

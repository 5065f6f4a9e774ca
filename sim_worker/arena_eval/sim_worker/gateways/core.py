"""What every gateway shares: sessions into the pool, tokens, and the fleet record.

Why a session per client: the pool batches *requests*, and a PolicyClient has
one reply stream and handles one request at a time. Giving every connected
client (a ZeroMQ identity, a websocket) its own PolicyClient lets N clients'
requests wait in the pool's stream together, so one forward pass answers
several of them, and each reply finds its way back on its own stream. A
session's calls run on a thread pool, never on the loop that reads sockets,
so one slow answer never holds up another client (openpi#717's problem).
Asyncio gateways await ``GatewayCore.call`` (the blocking call in the
executor).

What a session adds to a client that knows nothing of arena-eval: an episode
id per env (a new one after each ``reset``), a step counter per env and the
"episode just started" flag, the session's task description as every row's
instruction, and the gateway's ``--task`` as every row's task.

Redis: each PolicyClient reconnects with backoff within its timeout; the spec
fetch and the heartbeat thread back off on their own, so a Redis restart is a
pause for the gateway's clients, not a crash. Tokens come from an env var or a
file (never argv), are compared in constant time and are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from arena_eval.broker import fleet
from arena_eval.broker.connection import connect
from arena_eval.broker.errors import ArenaEvalError, BrokerUnavailable, ConfigError
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import PoolNotFound, live_workers, read_spec
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.sim_worker.client import PolicyClient, PolicyTimeout, RemotePolicyError

log = logging.getLogger("arena_eval.gateway")

T = TypeVar("T")
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_BACKOFF_MAX_S = 2.0


class GatewayError(ArenaEvalError):
    """An error a gateway sends back to its client: what went wrong and where."""

    def __init__(self, message: str, *, source: str, must_reconnect: bool = False) -> None:
        super().__init__(message)
        self.source = source
        self.must_reconnect = must_reconnect


def error_reply(exc: BaseException) -> dict[str, Any]:
    """``{"error", "must_reconnect", "source"}`` for any failure of one request."""
    if isinstance(exc, GatewayError):
        source, again = exc.source, exc.must_reconnect
    elif isinstance(exc, SpecMismatch):
        source, again = "spec", False
    elif isinstance(exc, PolicyTimeout):
        source, again = "pool_timeout", False
    elif isinstance(exc, RemotePolicyError):
        source, again = "policy", False
    elif isinstance(exc, PoolNotFound):
        source, again = "pool", False
    elif isinstance(exc, BrokerUnavailable):
        source, again = "redis", False
    else:
        source, again = "gateway", False
    text = str(exc) if isinstance(exc, ArenaEvalError) else f"{type(exc).__name__}: {exc}"
    return {"error": text, "must_reconnect": again, "source": source}


# -- tokens ----------------------------------------------------------------------
def load_token(env_var: str | None = None, file: str | Path | None = None) -> str | None:
    """The API token from an environment variable or a file; None: no token required."""
    if env_var and file:
        raise ConfigError("give the API token by --api-token-env or --api-token-file, not both")
    if env_var:
        value = os.environ.get(env_var, "")
        if not value:
            raise ConfigError(
                f"--api-token-env {env_var}: that environment variable is not set or empty; "
                "export it, or leave the option out to serve without a token"
            )
        return value
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--api-token-file: cannot read {file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"--api-token-file: {file} is empty; write the token into it")
        return value
    return None


def token_ok(expected: str | None, given: object) -> bool:
    """Constant-time comparison; any token passes when none is expected."""
    if expected is None:
        return True
    if isinstance(given, str):
        given = given.encode("utf-8")
    if not isinstance(given, bytes):
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given)


# -- configuration -----------------------------------------------------------------
@dataclass(frozen=True)
class GatewayConfig:
    """One gateway in front of one pool."""

    #: The pool every request goes to.
    pool: str
    #: ``zmq`` or ``openpi``: shown in ``arena-eval workers`` and ``pools``.
    protocol: str
    #: Where clients connect (``tcp://0.0.0.0:5555``, ``ws://0.0.0.0:8000``), for listings.
    address: str
    #: Seconds one request may wait for the pool before its client gets a pool_timeout error.
    timeout_s: float = 30.0
    #: Threads that run sessions' calls: the most requests in flight into the pool at once.
    max_in_flight: int = 64
    #: Every row's task (a pool serving several tasks needs it); "" for none.
    task: str = ""
    #: A client silent this long has its requester and reply stream closed (as Arena v2's
    #: server drops idle clients); its session (family, task description, episodes) is kept,
    #: and its next request opens a new requester.
    idle_timeout_s: float = 600.0
    #: A client silent this long is forgotten altogether (ZeroMQ never says a peer left,
    #: so this bounds the sessions a gateway keeps); ``disconnect`` / a closed websocket
    #: forget it at once. Never shorter than ``idle_timeout_s``.
    forget_after_s: float = 86400.0
    #: The largest ZeroMQ message accepted; a bigger one drops its connection unread
    #: (openpi's servers use the same 64 MiB bound).
    max_message_bytes: int = 64 * 1024 * 1024
    #: Name in ``arena-eval workers``; None: ``gw-<protocol>-host-pid-random``.
    gateway_id: str | None = None
    #: Redis to work on; None: ``RedisSettings.from_env()``.
    redis: RedisSettings | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout must be > 0 s, got {self.timeout_s}")
        if self.idle_timeout_s <= 0:
            raise ConfigError(f"idle timeout must be > 0 s, got {self.idle_timeout_s}")
        if self.max_message_bytes < 1024:
            raise ConfigError(
                f"max message size must be >= 1024 bytes, got {self.max_message_bytes}"
            )
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {self.max_in_flight}")


# -- sessions ------------------------------------------------------------------------
class Session:
    """One client's requester into the pool; its calls are serialised by ``lock``."""

    def __init__(self, core: GatewayCore, key: str) -> None:
        self.core = core
        self.key = key
        self.lock = threading.Lock()
        #: ``gr00t`` until the client does Arena's ``get_init_info`` handshake, then ``arena``.
        self.family = "gr00t"
        self.num_envs: int | None = None
        #: ``set_task_description`` text: every row's instruction when set.
        self.instruction = ""
        self.requests = 0
        #: The last request's timing split (queue, decode, infer, encode, round trip), in ms.
        self.last_timing: dict[str, float] = {}
        self.last_seen = time.monotonic()
        self._client: PolicyClient | None = None
        self._epoch: dict[int, int] = {}
        self._steps: dict[int, int] = {}

    def infer(
        self, obs: Mapping[str, np.ndarray], *, instructions: str | Sequence[str] = ""
    ) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
        """Actions ``(B, H, A)`` and per-row infos for one batch (blocking)."""
        with self.lock:
            self.last_seen = time.monotonic()
            client = self._requester()
            rows = client.spec.check_observations(obs) if client.spec else 0  # set by _requester
            envs = range(rows)
            ids = [f"{self.key}:{e}:{self._epoch.get(e, 0)}" for e in envs]
            steps = [self._steps.get(e, 0) for e in envs]
            text = self.instruction or instructions
            actions = client.infer(
                obs, ids, steps=steps, starts=[s == 0 for s in steps],
                tasks=self.core.config.task, instructions=text,
            )  # fmt: skip
            self.last_timing = dict(client.last_timing)  # the pool's own split, for replies
            for e in envs:
                self._steps[e] = self._steps.get(e, 0) + 1
            self.requests += 1
            self.core.count_request()
            self.last_seen = time.monotonic()
            return actions, client.last_infos

    def pool_spec(self) -> PolicySpec:
        """The spec this session's requests are checked against (fetched once)."""
        with self.lock:
            spec = self._requester().spec
        assert spec is not None  # set by _requester
        return spec

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """New episodes for ``env_ids`` (all envs when None)."""
        with self.lock:
            targets = list(env_ids) if env_ids is not None else list(self._steps)
            for e in targets:
                self._epoch[int(e)] = self._epoch.get(int(e), 0) + 1
                self._steps[int(e)] = 0

    def _requester(self) -> PolicyClient:
        if self._client is None:
            client = PolicyClient(
                self.core.config.pool, self.core.settings, timeout_s=self.core.config.timeout_s,
                handshake=False,
            )  # fmt: skip
            client.spec = self.core.spec()
            self._client = client
        return self._client

    def close_if_idle(self, cutoff: float) -> bool:
        """Close the requester (not the session) when silent since ``cutoff`` and not busy.

        The session's state stays: a client whose connection is still open keeps its
        family, task description and episodes; ``_requester`` opens a new one on demand.
        """
        if not self.lock.acquire(blocking=False):
            return False  # a call in flight: not idle
        try:
            if self._client is None or self.last_seen >= cutoff:
                return False
            self._client.close()
            self._client = None
            return True
        finally:
            self.lock.release()

    def close(self) -> None:
        with self.lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class GatewayCore:
    """Sessions, the spec, the executor and the fleet record of one gateway process."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.settings = config.redis or RedisSettings.from_env()
        self.keys = Keys(self.settings.prefix)
        self._r = connect(self.settings)
        self.gateway_id = config.gateway_id or (
            f"gw-{config.protocol}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._executor = ThreadPoolExecutor(config.max_in_flight, thread_name_prefix="gateway")
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.started = time.time()
        self.errors = 0
        self.requests = 0

    # -- the pool ------------------------------------------------------------------
    def spec(self, timeout_s: float | None = None) -> PolicySpec:
        """The pool's spec, waiting (Redis reconnects with backoff) up to ``timeout_s``."""
        wait = self.config.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait
        backoff = 0.05
        while True:
            try:
                spec = read_spec(self._r, self.keys, self.config.pool)
                if spec is not None:
                    return spec
            except _REDIS_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(
                        f"lost Redis at {self.settings.masked_url()}: {exc}"
                    ) from None
            if time.monotonic() >= deadline:
                raise PoolNotFound(
                    f"pool {self.config.pool!r} has no spec: no policy worker has served it yet. "
                    f"Start one: `arena-eval policy serve --pool {self.config.pool} ...`"
                )
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def ready(self) -> bool:
        """True when a live policy worker serves the pool (False while Redis is away)."""
        try:
            return bool(live_workers(self._r, self.keys, self.config.pool))
        except _REDIS_ERRORS:
            return False

    # -- sessions ------------------------------------------------------------------
    def session(self, key: str) -> Session:
        """The session of one client (made on first use)."""
        with self._lock:
            found = self._sessions.get(key)
            if found is None:
                found = self._sessions[key] = Session(self, key)
            found.last_seen = time.monotonic()
            return found

    def drop_idle(self) -> list[str]:
        """Close the requesters of sessions silent for ``idle_timeout_s``; forget the ones
        silent for ``forget_after_s``. Returns the keys whose requester was closed."""
        now = time.monotonic()
        with self._lock:
            sessions = list(self._sessions.items())
        closed = [k for k, s in sessions if s.close_if_idle(now - self.config.idle_timeout_s)]
        forget_cutoff = now - max(self.config.forget_after_s, self.config.idle_timeout_s)
        for key, session in sessions:
            if session.last_seen < forget_cutoff and not session.lock.locked():
                self.drop(key)
        return closed

    def count_request(self) -> None:
        """One more answered request (the total survives forgotten sessions)."""
        with self._lock:
            self.requests += 1

    def drop(self, key: str) -> None:
        """Forget a client: close its requester (its reply stream is deleted)."""
        with self._lock:
            found = self._sessions.pop(key, None)
        if found is not None:
            self._executor.submit(found.close)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the gateway's threads (for thread-based gateways)."""
        return self._executor.submit(fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Await ``fn(*args)`` run on the gateway's threads (for asyncio gateways)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # -- the fleet record ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``arena-eval workers`` / ``pools`` show about this gateway."""
        with self._lock:
            sessions = list(self._sessions.values())
        return {
            "protocol": self.config.protocol, "pool": self.config.pool,
            "address": self.config.address, "host": socket.gethostname(), "pid": os.getpid(),
            "sessions": len(sessions), "requests": self.requests,
            "errors": self.errors, "started": self.started, "state": "serving",
        }  # fmt: skip

    def start(self) -> None:
        """Register in the fleet and keep the record alive on a thread."""
        self._beat = threading.Thread(target=self._beat_loop, name="gateway-beat", daemon=True)
        self._beat.start()

    def _beat_loop(self) -> None:
        backoff = fleet.HEARTBEAT_INTERVAL_S
        warned = False
        while not self._stop.is_set():
            try:
                pipe = self._r.pipeline(transaction=False)
                self.drop_idle()
                fleet.gateway_heartbeat(pipe, self.keys, self.gateway_id, self.status())
                pipe.execute()
                backoff, warned = fleet.HEARTBEAT_INTERVAL_S, False
            except _REDIS_ERRORS as exc:
                if not warned:
                    log.warning("gateway heartbeat: Redis unreachable (%s); retrying", exc)
                    warned = True
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            self._stop.wait(backoff)

    def stop(self) -> None:
        """Deregister, close every session and the threads."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        with contextlib.suppress(*_REDIS_ERRORS):  # else the record expires on its own
            fleet.deregister(self._r, self.keys, self.gateway_id)
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

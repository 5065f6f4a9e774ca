"""A probe of Redis for ``/readyz`` and build info: one short try, never a retry loop.

Why not the workers' own client: it retries with backoff for tens of seconds
(a Redis restart is a pause to a worker), and a readiness probe must answer
within its own timeout, saying "Redis does not answer" rather than hanging.
The probe has its own connection pool, no retries and a one-second socket
timeout; it shares nothing with the serve loop, so a scrape never waits on a
batch in flight and the serve loop never waits on a scrape.
"""

from __future__ import annotations

import threading
from importlib import metadata

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from arena_eval.broker.connection import connect
from arena_eval.broker.settings import RedisSettings

__all__ = ["RedisProbe", "package_version"]

#: A probe that takes longer than this says Redis is not answering.
PROBE_TIMEOUT_S = 1.0


def package_version() -> str:
    try:
        return metadata.version("arena-eval")
    except metadata.PackageNotFoundError:
        return "unknown"


class RedisProbe:
    """Ping and ``INFO server`` on a client of its own (made on first use)."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        #: (server kind, version) once read: it does not change under a running worker
        self.server: tuple[str, str] | None = None

    def _get(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                base = connect(self.settings, retry_budget_s=0, socket_timeout_s=PROBE_TIMEOUT_S)
                kwargs = dict(base.connection_pool.connection_kwargs)
                kwargs.update(retry=Retry(NoBackoff(), 0), socket_connect_timeout=PROBE_TIMEOUT_S)
                cls = base.connection_pool.connection_class
                pool = redis.ConnectionPool(connection_class=cls, **kwargs)
                self._client = redis.Redis(connection_pool=pool)
            return self._client

    def check(self) -> tuple[bool, str]:
        """(True, "ok") when Redis answers PING now; else (False, why, one line)."""
        try:
            self._get().ping()
        except (redis.RedisError, OSError) as exc:
            return False, f"Redis at {self.settings.masked_url()} does not answer: {exc}"
        return True, "ok"

    def server_info(self) -> tuple[str, str]:
        """(kind, version) of the server -- ``valkey``/``redis`` -- or ("", "") if unreachable."""
        if self.server is None:
            try:
                raw = self._get().info("server")
            except (redis.RedisError, OSError):
                return "", ""
            kind = str(raw.get("server_name") or "redis")
            version = str(raw.get("valkey_version") or raw.get("redis_version") or "")
            self.server = (kind, version)
        return self.server

"""Open Redis clients the way the fabric needs them.

Two choices here are measured, not guessed (see ``docs/architecture.md``):

* **Pure-Python command packing.** With hiredis installed, redis-py packs
  commands with ``hiredis.pack_command``, which copies every argument into one
  new buffer; for a 1.5 MB observation that costs more than the send itself.
  The pure-Python packer hands large arguments (and memoryviews) to
  ``sendall`` untouched, so observation bytes go from numpy to the socket
  without an extra copy. Replies are still parsed by hiredis.
* **Reconnect with backoff.** Every command retries connection errors with
  exponential backoff for ``settings.retry_budget_s``, so a Redis restart is a
  pause, not a crash.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import PythonRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from arena_eval.broker.errors import BrokerUnavailable
from arena_eval.broker.settings import RedisSettings, parse_url

#: Socket reads of this size let hiredis pull multi-megabyte replies in few syscalls.
SOCKET_READ_SIZE = 1 << 20
_BACKOFF_CAP_S = 1.0


class _PackInPython:
    """Mixin: pack commands in Python so big arguments are sent without a copy."""

    def _construct_command_packer(self, packer: Any) -> Any:
        if packer is not None:
            return packer
        return PythonRespSerializer(self._buffer_cutoff, self.encoder.encode)  # type: ignore[attr-defined]


class TcpConnection(_PackInPython, redis.Connection):
    pass


class UnixConnection(_PackInPython, redis.UnixDomainSocketConnection):
    pass


class TlsConnection(_PackInPython, redis.SSLConnection):
    pass


def retry_policy(budget_s: float) -> Retry:
    """Exponential backoff (capped at 1 s) that keeps trying for about ``budget_s``."""
    retries = max(1, int(budget_s / _BACKOFF_CAP_S) + 6)
    return Retry(
        ExponentialWithJitterBackoff(cap=_BACKOFF_CAP_S, base=0.02),
        retries,
        supported_errors=(RedisConnectionError, RedisTimeoutError, ConnectionResetError, OSError),
    )


def resolve_url(settings: RedisSettings) -> str:
    """The URL to connect to: the configured one, or the embedded server's (started on demand)."""
    if settings.url is not None:
        return settings.url
    from arena_eval.broker import embedded  # local import: only the default path needs it

    return embedded.resolve_url(settings)


def connect(
    settings: RedisSettings | None = None,
    *,
    retry_budget_s: float | None = None,
    socket_timeout_s: float | None = None,
) -> redis.Redis:
    """A redis-py client for ``settings`` (default: the environment, else embedded)."""
    settings = settings or RedisSettings.from_env()
    url = resolve_url(settings)
    kwargs = parse_url(url, username=settings.username, password=settings.password)
    if "unix_socket_path" in kwargs:
        kwargs["connection_class"] = UnixConnection
        kwargs["path"] = kwargs.pop("unix_socket_path")
    elif kwargs.pop("ssl", False):
        kwargs["connection_class"] = TlsConnection
    else:
        kwargs["connection_class"] = TcpConnection
        kwargs["socket_keepalive"] = True
    budget = settings.retry_budget_s if retry_budget_s is None else retry_budget_s
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": settings.socket_timeout_s
        if socket_timeout_s is None
        else socket_timeout_s,
        "socket_read_size": SOCKET_READ_SIZE,
        "retry": retry_policy(budget),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 0,
        **kwargs,
    }
    pool = redis.ConnectionPool(**options)
    return redis.Redis(connection_pool=pool)


def ping(client: redis.Redis, settings: RedisSettings | None = None) -> None:
    """Check the connection; raise BrokerUnavailable with the masked URL and a hint."""
    try:
        client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        where = settings.masked_url() if settings else "the configured Redis"
        raise BrokerUnavailable(
            f"cannot reach Redis at {where}: {exc}. Start it (`arena-eval redis start` for the "
            "embedded server) or pass --redis-url / ARENA_REDIS_URL."
        ) from None

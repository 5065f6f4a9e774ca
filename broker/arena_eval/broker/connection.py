"""Open Redis clients the way the fabric needs them.

Two choices here are measured, not guessed (see ``docs/architecture.md``):

* **Pure-Python command packing.** With hiredis installed, redis-py packs
  commands with ``hiredis.pack_command``, which copies every argument into one
  new buffer; for a 1.5 MB observation that costs more than the send itself.
  The pure-Python packer hands large arguments (and memoryviews) to
  ``sendall`` untouched, so observation bytes go from numpy to the socket
  without an extra copy. Replies are still parsed by hiredis.
* **Cluster mode from the server.** A URL of any node of a Redis Cluster
  opens redis-py's cluster client (``cluster.py``): ``INFO cluster`` says so.
* **Reconnect with backoff.** Every command retries connection errors with
  exponential backoff for ``settings.retry_budget_s``, so a Redis restart is a
  pause, not a crash.

Two Redis refusals are not outages and are never retried: redis-py's
``AuthenticationError`` (WRONGPASS, NOAUTH) subclasses ``ConnectionError``, so
a plain ``Retry`` would spend the whole budget on a wrong password and then
blame the network. ``_FailFastRetry`` raises ``BrokerAuthError`` at once
instead, and turns an ACL denial (NOPERM) into ``BrokerPermissionError``; both
name the masked URL and the Redis user, never the password.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import PythonRespSerializer
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from arena_eval.broker import cluster as cluster_mod
from arena_eval.broker.errors import BrokerAuthError, BrokerPermissionError, BrokerUnavailable
from arena_eval.broker.settings import ENV_PASSWORD, ENV_USERNAME, RedisSettings, parse_url

#: Socket reads of this size let hiredis pull multi-megabyte replies in few syscalls.
SOCKET_READ_SIZE = 1 << 20
_BACKOFF_CAP_S = 1.0
_T = TypeVar("_T")


class _PackInPython:
    """Mixin: pack commands in Python so big arguments are sent without a copy."""

    def _construct_command_packer(self, packer: Any) -> Any:
        if packer is not None:
            return packer
        return PythonRespSerializer(self._buffer_cutoff, self.encoder.encode)  # type: ignore[attr-defined]

    def connect(self) -> None:
        """Connect; refused credentials become ``BrokerAuthError`` here too, because some
        redis-py releases authenticate outside the retry loop (see ``_FailFastRetry``)."""
        try:
            super().connect()  # type: ignore[misc]
        except AuthenticationError as exc:
            peer = getattr(getattr(self, "retry", None), "peer", None)
            raise auth_error(exc, peer if isinstance(peer, Peer) else Peer()) from None


class TcpConnection(_PackInPython, redis.Connection):
    pass


class UnixConnection(_PackInPython, redis.UnixDomainSocketConnection):
    pass


class TlsConnection(_PackInPython, redis.SSLConnection):
    pass


@dataclass(frozen=True)
class Peer:
    """Who talks to whom, in printable form: the masked URL and the Redis user."""

    where: str = "the configured Redis"
    user: str = "default"

    @classmethod
    def of(cls, settings: RedisSettings | None, url: str | None = None) -> Peer:
        if settings is None:
            return cls()
        kwargs = parse_url(url, settings.username, settings.password) if url else {}
        user = kwargs.get("username") or settings.username or "default"
        return cls(settings.masked_url(), str(user))


_CREDENTIALS_HINT = (
    "Give the credentials in the URL (redis://USER:PASSWORD@host:port, ideally through "
    f"ARENA_REDIS_URL) or with {ENV_USERNAME} / {ENV_PASSWORD}."
)


def auth_error(exc: AuthenticationError, peer: Peer) -> BrokerAuthError:
    """A readable ``BrokerAuthError`` for redis-py's ``exc`` (the server's text has no secret)."""
    code = getattr(exc, "status_code", None) or _refusal_code(str(exc))
    if code == "NOAUTH":  # the server's text (about HELLO) would only confuse
        return BrokerAuthError(
            f"Redis at {peer.where} requires a password and none was given. {_CREDENTIALS_HINT}"
        )
    elif code == "WRONGPASS":
        what = (
            f"Redis at {peer.where} refused user {peer.user!r}: wrong password, or no such "
            "(enabled) user"
        )
    else:
        what = f"Redis at {peer.where} refused the authentication of user {peer.user!r}"
    return BrokerAuthError(f"{what} ({str(exc).rstrip('.')}). {_CREDENTIALS_HINT}")


def _refusal_code(text: str) -> str | None:
    """The server's error code, from its text, for redis-py releases without ``status_code``."""
    lowered = text.lower()
    if "wrongpass" in lowered or "invalid username-password pair" in lowered:
        return "WRONGPASS"
    if "noauth" in lowered or "authentication required" in lowered:
        return "NOAUTH"
    return None


def is_permission_error(exc: BaseException) -> bool:
    """True for an ACL denial, whether redis-py classified it (NoPermissionError) or not."""
    if isinstance(exc, NoPermissionError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith("NOPERM")


def permission_error(exc: BaseException, peer: Peer) -> BrokerPermissionError:
    return BrokerPermissionError(
        f"Redis user {peer.user!r} at {peer.where} is not allowed to do this ({exc}).",
        user=peer.user,
        detail=str(exc),
    )


class _FailFastRetry(Retry):
    """Retry connection errors with backoff; raise authentication and ACL refusals at once."""

    def __init__(self, backoff: Any, retries: int, peer: Peer) -> None:
        super().__init__(
            backoff,
            retries,
            supported_errors=(
                RedisConnectionError,
                RedisTimeoutError,
                ConnectionResetError,
                OSError,
            ),
        )
        self.peer = peer

    def call_with_retry(  # type: ignore[override]
        self, do: Callable[[], _T], fail: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> _T:
        # Refusals are translated inside ``do``: the ArenaEvalError they become is not a
        # connection error, so no redis-py version's Retry loop retries it. Extra arguments
        # (``is_retryable``, ``with_failure_count`` in redis-py >= 6) pass through untouched.
        peer = self.peer

        def do_or_refuse() -> _T:
            try:
                return do()
            except AuthenticationError as exc:
                raise auth_error(exc, peer) from None
            except ResponseError as exc:
                if is_permission_error(exc):
                    raise permission_error(exc, peer) from None
                raise

        return super().call_with_retry(do_or_refuse, fail, *args, **kwargs)


def retry_policy(budget_s: float, peer: Peer | None = None) -> Retry:
    """Exponential backoff (capped at 1 s) that keeps trying for about ``budget_s``.

    Authentication errors are never retried (see the module docstring).
    """
    retries = max(1, int(budget_s / _BACKOFF_CAP_S) + 6)
    backoff = ExponentialWithJitterBackoff(cap=_BACKOFF_CAP_S, base=0.02)
    return _FailFastRetry(backoff, retries, peer or Peer())


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
        "retry": retry_policy(budget, Peer.of(settings, url)),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 0,
        **kwargs,
    }
    if "path" not in kwargs and _cluster_mode(url, options):
        return cluster_mod.open_cluster(options)
    pool = redis.ConnectionPool(**options)
    return redis.Redis(connection_pool=pool)


def twin(client: redis.Redis) -> redis.Redis:
    """A second client on ``client``'s connections, for another thread (a heartbeat).

    A cluster client is thread-safe with its per-node pools: it is its own twin.
    """
    if cluster_mod.is_cluster(client):
        return client
    return redis.Redis(connection_pool=client.connection_pool)


def connection_kwargs(client: redis.Redis) -> dict[str, Any]:
    """The settings ``client`` connects with (a cluster: those of the node it was opened on)."""
    if cluster_mod.is_cluster(client):
        return cluster_mod.default_node_kwargs(client)
    return dict(client.connection_pool.connection_kwargs)


#: Whether the server at a URL runs in cluster mode, asked once per process and URL.
_CLUSTER_BY_URL: dict[str, bool] = {}


def _cluster_mode(url: str, options: dict[str, Any]) -> bool:
    """Cluster mode is the server's to say (``INFO cluster``), so any node's plain URL works."""
    known = _CLUSTER_BY_URL.get(url)
    if known is None:
        answer = cluster_mod.server_is_cluster(options)
        if answer is None:  # no answer (an outage, a refusal): ask again next time
            return False
        known = _CLUSTER_BY_URL[url] = answer
    return known


def ping(
    client: redis.Redis, settings: RedisSettings | None = None, *, budget_s: float | None = None
) -> None:
    """Check the connection; raise a readable error with the masked URL and what to do.

    ``BrokerAuthError`` for refused credentials (never retried), ``BrokerUnavailable``
    once the retry budget (``budget_s``, named in the message when given) is spent.
    """
    peer = Peer.of(settings, settings.url if settings else None)
    try:
        client.ping()
    except AuthenticationError as exc:  # a client not built by connect()
        raise auth_error(exc, peer) from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        waited = f" (gave up after about {budget_s:g} s of retries)" if budget_s else ""
        reason = str(exc).rstrip(".")
        raise BrokerUnavailable(
            f"cannot reach Redis at {peer.where}{waited}: {reason}. Start it (`arena-eval redis "
            "start` for the embedded server) or pass --redis-url / ARENA_REDIS_URL."
        ) from None

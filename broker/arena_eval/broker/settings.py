"""Connection settings: one dataclass, built from a URL or from the environment.

A URL of ``redis://``, ``rediss://`` (TLS) or ``unix://`` points every worker at
a shared server. No URL at all means the embedded server that arena-eval
starts itself (see ``embedded.py``), so a single machine works out of the box.
The password never appears in ``repr`` or in ``masked_url``: those are the
only forms that logs and status output use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from arena_eval.broker.errors import ConfigError

ENV_URL = "ARENA_REDIS_URL"
ENV_USERNAME = "ARENA_REDIS_USERNAME"
ENV_PASSWORD = "ARENA_REDIS_PASSWORD"
ENV_PREFIX = "ARENA_PREFIX"
ENV_HOME = "ARENA_HOME"

DEFAULT_PREFIX = "arena:"
SCHEMES = ("redis", "rediss", "unix")
MASK = "****"


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to talk to it.

    ``url=None`` selects the embedded server under ``home`` (``ARENA_HOME``).
    """

    url: str | None = None
    prefix: str = DEFAULT_PREFIX
    home: Path | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    #: Longest silence tolerated on a socket read (blocking reads use less). A link that
    #: goes silent (dropped by a firewall, host gone without a reset) fails after this.
    socket_timeout_s: float = 15.0
    #: How long a client keeps reconnecting (with backoff) before giving up.
    retry_budget_s: float = 30.0

    def __post_init__(self) -> None:
        if self.url is not None:
            scheme = urlsplit(self.url).scheme
            if scheme not in SCHEMES:
                raise ConfigError(
                    f"unsupported Redis URL scheme {scheme!r} in {mask_url(self.url)}; "
                    "use redis://host:port, rediss://host:port (TLS) or unix:///path/to/sock"
                )
        if not self.prefix or not self.prefix.endswith(":"):
            raise ConfigError(
                f"key prefix {self.prefix!r} must be non-empty and end with ':' (e.g. 'arena:')"
            )

    @classmethod
    def from_url(cls, url: str | None, **overrides: object) -> RedisSettings:
        """Settings for ``url``; ``None`` or ``""`` means the embedded server."""
        return cls(url=url or None, **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, url: str | None = None
    ) -> RedisSettings:
        """Settings from ``ARENA_*`` variables; an explicit ``url`` wins over the environment."""
        env = os.environ if environ is None else environ
        home = env.get(ENV_HOME)
        return cls(
            url=url or env.get(ENV_URL) or None,
            prefix=env.get(ENV_PREFIX) or DEFAULT_PREFIX,
            home=Path(home).expanduser() if home else None,
            username=env.get(ENV_USERNAME) or None,
            password=env.get(ENV_PASSWORD) or None,
        )

    @property
    def is_embedded(self) -> bool:
        return self.url is None

    def with_url(self, url: str | None) -> RedisSettings:
        return replace(self, url=url)

    def masked_url(self) -> str:
        """The URL with any password replaced by ``****``; safe to print."""
        if self.url is None:
            return "embedded"
        return mask_url(self.url)

    def __repr__(self) -> str:
        return (
            f"RedisSettings(url={self.masked_url()!r}, prefix={self.prefix!r}, "
            f"home={str(self.home) if self.home else None!r})"
        )

    __str__ = __repr__

    def connection_kwargs(self) -> dict[str, object]:
        """Keyword arguments for a redis-py connection to ``self.url`` (not embedded)."""
        if self.url is None:
            raise ConfigError("the embedded server has no URL until it is started")
        return parse_url(self.url, username=self.username, password=self.password)


def mask_url(url: str) -> str:
    """Replace the password in a Redis URL (netloc or ``?password=``) with ``****``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = []
        for item in query.split("&"):
            key, _, value = item.partition("=")
            pairs.append(f"{key}={MASK}" if key == "password" and value else item)
        query = "&".join(pairs)
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{out}?{query}" if query else out


def parse_url(
    url: str, username: str | None = None, password: str | None = None
) -> dict[str, object]:
    """Turn a URL into redis-py connection kwargs; URL credentials win over the arguments."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    kwargs: dict[str, object] = {}
    user = unquote(parts.username) if parts.username else username
    secret = unquote(parts.password) if parts.password else query.get("password", password)
    if user:
        kwargs["username"] = user
    if secret:
        kwargs["password"] = secret
    try:
        db = int(query.get("db", (parts.path.lstrip("/") if parts.scheme != "unix" else "") or 0))
    except ValueError as exc:
        raise ConfigError(f"bad database number in {mask_url(url)}: {exc}") from None
    kwargs["db"] = db
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"unix URL needs a socket path: {mask_url(url)}")
        kwargs["unix_socket_path"] = parts.path
    else:
        kwargs["host"] = parts.hostname or "localhost"
        try:
            kwargs["port"] = parts.port or 6379
        except ValueError as exc:
            raise ConfigError(f"bad port in {mask_url(url)}: {exc}") from None
        if parts.scheme == "rediss":
            kwargs["ssl"] = True
            for name in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if name in query:
                    kwargs[name] = query[name]
    return kwargs


def build_url(
    *,
    unix_socket: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    password: str | None = None,
) -> str:
    """Build a URL the rest of the code (and redis-cli users) can read."""
    auth = f":{quote(password, safe='')}@" if password else ""
    if unix_socket is not None:
        return f"unix://{auth}{unix_socket}"
    return f"redis://{auth}{host}:{port or 6379}"

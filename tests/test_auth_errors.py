"""Refused credentials fail at once with a clear line; one-shot commands give up early.

redis-py's AuthenticationError subclasses ConnectionError, so without care a
wrong password is retried for the whole budget and then reported as "cannot
reach Redis". Each case here uses a retry budget far longer than its wait
deadline: only a refusal that is not retried can finish in time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from arena_eval.broker.connection import connect, ping
from arena_eval.broker.errors import BrokerAuthError, BrokerUnavailable
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.common import cli_client
from tests.redis_servers import TestServer
from tests.worker_procs import REPO

LONG_BUDGET_S = 600.0
DEADLINE_S = 20.0


def _fails_within_deadline(call: object) -> BaseException:
    """Run ``call`` in a thread; return what it raised, or fail if it is still retrying."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()  # type: ignore[operator]
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "still retrying a refused authentication"
    assert raised, "no error raised"
    return raised[0]


@pytest.mark.parametrize(
    ("userinfo", "expected"),
    [
        (":not-the-password@", "refused user 'default': wrong password"),
        ("nobody:not-the-password@", "refused user 'nobody': wrong password, or no such"),
        ("", "requires a password and none was given"),
    ],
)
def test_refused_credentials_fail_at_once_with_what_to_do(
    own_server: TestServer, userinfo: str, expected: str
) -> None:
    url = f"redis://{userinfo}127.0.0.1:{own_server.port}/0"
    settings = RedisSettings(url=url, retry_budget_s=LONG_BUDGET_S)
    client = connect(settings)
    exc = _fails_within_deadline(lambda: ping(client, settings))
    assert isinstance(exc, BrokerAuthError), repr(exc)
    text = str(exc)
    assert expected in text
    assert "ARENA_REDIS_PASSWORD" in text and "redis://USER:PASSWORD@" in text
    assert "not-the-password" not in text
    # any command, not only ping, refuses at once (workers never call ping)
    exc = _fails_within_deadline(lambda: client.get("x"))
    assert isinstance(exc, BrokerAuthError), repr(exc)


def test_right_password_still_connects(own_server: TestServer) -> None:
    settings = RedisSettings(url=own_server.url, retry_budget_s=LONG_BUDGET_S)
    client = connect(settings)
    ping(client, settings)
    assert client.set("k", "v") is True


def test_password_from_environment_variable_is_used(own_server: TestServer) -> None:
    env = {
        "ARENA_REDIS_URL": f"redis://127.0.0.1:{own_server.port}",
        "ARENA_REDIS_PASSWORD": own_server.password,
    }
    settings = RedisSettings.from_env(env)
    ping(connect(settings), settings)


def test_one_shot_client_gives_up_early_and_says_so() -> None:
    exc = _fails_within_deadline(lambda: cli_client("redis://:pw@127.0.0.1:1"))
    assert isinstance(exc, BrokerUnavailable), repr(exc)
    assert "gave up after about 3 s" in str(exc)
    assert "pw@" not in str(exc)


def test_one_shot_cli_command_against_unreachable_redis_is_one_clear_line() -> None:
    """`jobs` with the workers' 30 s budget would outlive this deadline."""
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "jobs", "--redis-url", "redis://127.0.0.1:1"],
        cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S, env=_clean_env(),
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cannot reach Redis at redis://127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr


def test_wrong_password_on_the_cli_is_one_clear_line(own_server: TestServer) -> None:
    url = f"redis://:not-the-password@127.0.0.1:{own_server.port}"
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "jobs"],
        cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S,
        env={**_clean_env(), "ARENA_REDIS_URL": url},
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "wrong password" in out.stderr and "Traceback" not in out.stderr
    assert "not-the-password" not in out.stdout + out.stderr


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARENA_")}
    env["PYTHONPATH"] = str(REPO)
    return env

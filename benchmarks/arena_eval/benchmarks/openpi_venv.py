"""A cached virtualenv holding openpi's own PyPI packages, for tests and the gateway benchmark.

Why a venv of its own: ``openpi-client`` pins ``numpy<2`` (and brings
dm-tree), which must not leak into arena-eval's environment; and the point of
the gateway tests is that the peer's client runs *unmodified*, as its users
install it. The venv is built once per (Python version, pinned versions) under
``~/.cache/arena-eval-tests`` (``ARENA_OPENPI_VENV_DIR`` overrides the
parent folder) and reused; it is built in a temporary folder and renamed into
place, so an interrupted build never leaves a half venv behind.

``openpi-server`` (openpi's ``WebsocketPolicyServer`` as a package) is the
baseline of ``arena-eval bench gateway``; it is installed where it installs,
and ``has_server`` says whether it did.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from arena_eval.broker.errors import ArenaEvalError

__all__ = ["CLIENT_REQUIREMENTS", "SERVER_REQUIREMENT", "OpenpiVenv", "VenvUnavailable", "ensure"]

#: openpi-client 0.1.2 imports typing_extensions without declaring it: installed beside it.
CLIENT_REQUIREMENTS = (
    "openpi-client==0.1.2", "numpy<2", "websockets", "msgpack", "typing_extensions",
)  # fmt: skip
SERVER_REQUIREMENT = "openpi-server==0.1.0"
_ENV_DIR = "ARENA_OPENPI_VENV_DIR"


class VenvUnavailable(ArenaEvalError):
    """The venv could not be built (no package index reachable, or pip failed)."""


@dataclass(frozen=True)
class OpenpiVenv:
    path: Path
    has_server: bool

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def _key() -> str:
    text = "|".join([sys.version.split()[0], *CLIENT_REQUIREMENTS, SERVER_REQUIREMENT])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def venv_dir() -> Path:
    parent = Path(os.environ.get(_ENV_DIR) or Path.home() / ".cache" / "arena-eval-tests")
    return parent / f"openpi-venv-{_key()}"


def _found(path: Path) -> OpenpiVenv | None:
    if (path / "ok").exists() and (path / "bin" / "python").exists():
        return OpenpiVenv(path, has_server=(path / "server-ok").exists())
    return None


def _pip(python: Path, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def ensure(timeout_s: float = 600.0) -> OpenpiVenv:
    """The cached venv, built now if missing; raise VenvUnavailable with pip's reason."""
    target = venv_dir()
    found = _found(target)
    if found is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, timeout=120
        )
        # pip records absolute paths in scripts, not in the site-packages we use: the rename is safe
        done = _pip(tmp / "bin" / "python", *CLIENT_REQUIREMENTS, timeout_s=timeout_s)
        if done.returncode != 0:
            raise VenvUnavailable(
                f"could not install {' '.join(CLIENT_REQUIREMENTS)} into a venv (is a package "
                f"index reachable?): {done.stderr.strip()[-500:]}"
            )
        check = subprocess.run(
            [str(tmp / "bin" / "python"), "-c",
             "import openpi_client.websocket_client_policy, openpi_client.action_chunk_broker"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if check.returncode != 0:
            raise VenvUnavailable(f"openpi-client installed but does not import: {check.stderr}")
        server = _pip(tmp / "bin" / "python", SERVER_REQUIREMENT, timeout_s=timeout_s)
        if server.returncode == 0:
            (tmp / "server-ok").write_text(SERVER_REQUIREMENT + "\n")
        (tmp / "ok").write_text("\n".join(CLIENT_REQUIREMENTS) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process got there first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except subprocess.SubprocessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VenvUnavailable(f"could not build the openpi venv: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = _found(target)
    if found is None:
        raise VenvUnavailable(f"the openpi venv at {target} is incomplete; delete it and retry")
    return found

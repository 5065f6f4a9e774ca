"""Start arena-eval processes for tests, and always stop them.

Children get the test's Redis URL and key prefix through the environment, like
real workers on other machines, and are killed in teardown whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from arena_eval.broker.settings import RedisSettings

REPO = Path(__file__).resolve().parent.parent


def child_env(settings: RedisSettings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["ARENA_REDIS_URL"] = settings.url or ""
    env["ARENA_PREFIX"] = settings.prefix
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Procs:
    """A set of child processes that are killed on exit."""

    def __init__(self, settings: RedisSettings, logdir: Path) -> None:
        self.settings = settings
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, name: str = "proc", **env: str) -> subprocess.Popen[bytes]:
        return self.python("-m", "arena_eval.cli", *args, name=name, **env)

    def python(self, *args: str, name: str = "proc", **env: str) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=child_env(self.settings, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.procs.index(proc)
        for path in self.logdir.glob(f"*-{index}.log"):
            return path.read_text(errors="replace")
        return ""

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def procs(settings: RedisSettings, logdir: Path) -> Iterator[Procs]:
    p = Procs(settings, logdir)
    try:
        yield p
    finally:
        p.stop_all()


def wait_until(
    check: Callable[[], object],
    timeout_s: float = 20.0,
    what: str = "condition",
    procs: Sequence[subprocess.Popen[bytes]] = (),
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(
                    f"process {p.args} exited with {p.returncode} while waiting for {what}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)

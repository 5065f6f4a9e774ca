"""The child processes of one ``bench fleet`` configuration, always stopped, their logs kept.

Why not ``latency._child``: a fleet run starts up to five children at once (sims, a policy
worker, a server) for tens of seconds, and when one dies the run must say why. Each child's
stderr goes to a file (a pipe nobody reads could fill and stall it), and ``failed`` quotes
the end of that file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from arena_eval.broker.errors import ArenaEvalError


class Children:
    """Python children of the benchmark, SIGTERMed (then killed) when the block exits."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="arena-fleet-")
        self.procs: list[subprocess.Popen[str]] = []
        self._logs: dict[int, Path] = {}
        self._names: dict[int, str] = {}

    def start(
        self, args: list[str], env: dict[str, str] | None = None, *, pipes: bool = False
    ) -> subprocess.Popen[str]:
        """``python ARGS``; with ``pipes``, its stdin and stdout are text pipes to this process."""
        log = Path(self._dir.name) / f"child-{len(self.procs)}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, *args],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        self.procs.append(proc)
        self._logs[proc.pid] = log
        self._names[proc.pid] = " ".join(args[:4])
        return proc

    def failed(self, proc: subprocess.Popen[str], what: str) -> ArenaEvalError:
        """An error naming ``what`` went wrong, with the end of ``proc``'s stderr."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
        tail = self._logs[proc.pid].read_text(errors="replace")[-2000:]
        return ArenaEvalError(
            f"bench fleet: {what} ({self._names[proc.pid]} ..., exit code "
            f"{proc.returncode}); its stderr ends:\n{tail}"
        )

    def check_alive(self) -> None:
        """Raise ``failed`` for the first child that has exited."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise self.failed(proc, "a child process exited early")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self._dir.cleanup()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

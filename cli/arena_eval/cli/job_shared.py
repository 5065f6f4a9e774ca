"""What the job command modules share: opening Redis, number and time formats, warnings.

Kept apart so that ``job_run_cmd`` (one job: submit, status, results) and
``job_admin_cmd`` (many jobs and workers: jobs, prune, cancel, workers) render
numbers and times the same way and print each bad-field warning once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from rich.console import Console

from arena_eval.broker.jobs import TERMINAL
from arena_eval.broker.keys import Keys
from arena_eval.cli.common import cli_client, esc

err = Console(stderr=True, highlight=False)
POLL_S = 0.5
#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
_ENDED = frozenset(s.value for s in TERMINAL)


def open_redis(redis_url: str | None) -> tuple[redis.Redis, Keys]:
    """A checked client for a one-shot job command, and the key builder of its prefix."""
    r, settings = cli_client(redis_url)
    return r, Keys(settings.prefix)


def num(value: Any, fmt: str = "{:.3f}", none: str = "-") -> str:
    """``value`` in ``fmt``, or ``none`` when it is missing."""
    return none if value is None else fmt.format(value)


def when(ts: float | None) -> str:
    """A unix time as local ``YYYY-MM-DD HH:MM:SS``; ``-`` when missing."""
    return "-" if not ts else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def ended(state: str) -> bool:
    """Whether a job state (as a string) is terminal."""
    return state in _ENDED


class Warnings:
    """Prints each warning about a bad field once, on stderr."""

    def __init__(self, out: Console = err) -> None:
        self.out = out
        self.seen: set[str] = set()
        self.pending: list[str] = []

    def flush(self) -> None:
        for line in self.pending:
            if line not in self.seen:
                self.seen.add(line)
                self.out.print(f"[yellow]warning:[/] {esc(line)}")
        self.pending.clear()

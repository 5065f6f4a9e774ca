"""Options and helpers shared by every command module: the Redis URL, JSON output, escaping.

``esc``: every string that comes from a user or from Redis goes through it before
it meets rich markup, so ``[/x]`` prints as ``[/x]`` instead of raising
MarkupError, and ``'arena-eval[policy]'`` keeps its brackets.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import typer
from rich.console import Console
from rich.markup import escape

from arena_eval.broker.settings import ENV_PASSWORD, ENV_URL, RedisSettings

if TYPE_CHECKING:
    import redis

console = Console()


def esc(text: object) -> str:
    """``text`` made safe to embed in rich markup (user input, job ids, data from Redis)."""
    return escape(str(text))


def url_has_password(url: str) -> bool:
    parts = urlsplit(url)
    try:
        in_query = bool(parse_qs(parts.query).get("password"))
        return bool(parts.password) or in_query
    except ValueError:  # malformed: the settings will say so
        return False


_warned_about_argv_password = False


def _warn_if_password_on_command_line(
    ctx: typer.Context, param: typer.CallbackParam, value: str | None
) -> str | None:
    """Once per process: a password in argv is readable by every local user with ``ps``."""
    global _warned_about_argv_password
    source = ctx.get_parameter_source(param.name or "")
    from_argv = source is not None and source.name == "COMMANDLINE"
    if value and from_argv and url_has_password(value) and not _warned_about_argv_password:
        _warned_about_argv_password = True
        Console(stderr=True, highlight=False).print(
            "warning: the password in --redis-url is visible to every user of this machine "
            f"(ps, /proc); set {ENV_URL} or {ENV_PASSWORD} in the environment instead.",
            markup=False,
        )
    return value


REDIS_URL_OPTION: Any = typer.Option(
    None,
    "--redis-url",
    envvar=ENV_URL,
    help=(
        "Redis URL (redis://, rediss://, unix://). Default: the embedded server. Keep "
        f"passwords out of the command line: use {ENV_URL} or {ENV_PASSWORD}."
    ),
    show_envvar=True,
    callback=_warn_if_password_on_command_line,
)
JSON_OPTION: Any = typer.Option(False, "--json", help="Print JSON for scripts.")


def settings_for(redis_url: str | None) -> RedisSettings:
    return RedisSettings.from_env(url=redis_url)


#: One-shot commands (status, jobs, submit, ...) give up on an unreachable Redis after this
#: long; long-running workers keep ``RedisSettings.retry_budget_s``.
ONE_SHOT_RETRY_BUDGET_S = 3.0


def cli_client(redis_url: str | None) -> tuple[redis.Redis, RedisSettings]:
    """A checked client for a one-shot command: a short retry budget, then one clear error."""
    from arena_eval.broker.connection import connect, ping

    settings = settings_for(redis_url)
    client = connect(settings, retry_budget_s=ONE_SHOT_RETRY_BUDGET_S)
    ping(client, settings, budget_s=ONE_SHOT_RETRY_BUDGET_S)
    return client, settings


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))

"""Options and helpers shared by every command module: the Redis URL and JSON output."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from arena_eval.broker.settings import RedisSettings

if TYPE_CHECKING:
    import redis

console = Console()

REDIS_URL_OPTION: Any = typer.Option(
    None,
    "--redis-url",
    envvar="ARENA_REDIS_URL",
    help="Redis URL (redis://, rediss://, unix://). Default: the embedded server.",
    show_envvar=True,
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

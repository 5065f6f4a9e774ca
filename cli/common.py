"""Options and helpers shared by every command module: the Redis URL and JSON output."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

from arena_eval.broker.settings import RedisSettings

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


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))

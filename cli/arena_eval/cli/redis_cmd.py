"""``arena-eval redis ...``: manage the embedded server and talk to the configured Redis.

Why a thin layer: the same start/stop/url logic is used by every worker through
``arena_eval.broker.embedded``; this module only parses arguments, calls those
functions and prints. Nothing printed here contains a password unless asked
for with ``url --show-password``.
"""

from __future__ import annotations

import typer
from rich.console import Console

from arena_eval.broker.embedded import EmbeddedInfo, EmbeddedRedis, resolve_url, server_status
from arena_eval.broker.redis_cli import run_redis_cli
from arena_eval.broker.settings import mask_url
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, esc, print_json, settings_for

app = typer.Typer(
    help="Manage the embedded Redis server and talk to the configured one.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True, highlight=False)


def _print_info(info: EmbeddedInfo, as_json: bool) -> None:
    if as_json:
        print_json(info.to_dict())
        return
    rows = {
        "url": info.url,
        "pid": info.pid,
        "socket": info.socket or "-",
        "port": info.port or "off",
        "server": f"{info.server} {info.version}",
        "uptime": f"{info.uptime_s} s",
        "memory": f"{info.used_memory / 2**20:.1f} MiB",
        "aof": "on" if info.aof_enabled else "off",
    }
    if info.home:
        rows["home"] = info.home
    for key, value in rows.items():
        console.print(f"[bold]{key:>8}[/]  {esc(value)}")


@app.command()
def start(
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, help="Also listen on 127.0.0.1:PORT (0 = TCP off)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Start the embedded Redis server (no-op if it already runs)."""
    info = EmbeddedRedis(settings_for(None).home).start(port)
    _print_info(info, as_json)


@app.command()
def stop() -> None:
    """Stop the embedded Redis server (its data stays in the append-only file)."""
    stopped = EmbeddedRedis(settings_for(None).home).stop()
    console.print("stopped" if stopped else "embedded Redis was not running")


@app.command()
def status(
    as_json: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Show whether the configured Redis answers, and its pid, version, memory and AOF state."""
    settings = settings_for(redis_url)
    info = server_status(settings)
    if info is not None:
        _print_info(info, as_json)
        return
    if as_json:
        print_json({"running": False, "url": settings.masked_url()})
    else:
        console.print(f"Redis ({esc(settings.masked_url())}) is not running / not answering")
    raise typer.Exit(1)


@app.command()
def url(
    show_password: bool = typer.Option(False, "--show-password", help="Print the real password."),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Print the URL connections use (password masked unless --show-password)."""
    full = resolve_url(settings_for(redis_url), autostart=False)
    typer.echo(full if show_password else mask_url(full))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def cli(ctx: typer.Context, redis_url: str | None = REDIS_URL_OPTION) -> None:
    """Run redis-cli against the configured Redis; extra arguments go to redis-cli.

    Example: arena-eval redis cli --scan --pattern 'arena:*'
    """
    rc = run_redis_cli(settings_for(redis_url), ctx.args)
    raise typer.Exit(rc)

"""``arena-eval gateway openpi``: parse the options, hand off to ``gateways.openpi_server``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from arena_eval.broker.errors import ConfigError
from arena_eval.cli.common import REDIS_URL_OPTION, console, esc, settings_for
from arena_eval.cli.metrics_cmd import METRICS_HOST_OPTION, METRICS_PORT_OPTION

_DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # mirrors openpi_server.DEFAULT_MAX_MESSAGE_BYTES


def openpi_cmd(
    pool: str = typer.Option(..., "--pool", help="Pool whose policy workers answer."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port for ws:// clients (0: a free one)."),
    metadata: str | None = typer.Option(
        None, "--metadata", help="JSON object added to the metadata frame sent on connect."
    ),
    map_file: Path | None = typer.Option(
        None, "--map", help="Key map file: JSON object or openpi_key=spec_key lines."
    ),
    key: list[str] = typer.Option(
        [],
        "--key",
        help="openpi_key=spec_key (repeatable); =@instruction or =@ignore. prompt -> instruction.",
    ),
    max_message_bytes: int = typer.Option(
        _DEFAULT_MAX_MESSAGE_BYTES, "--max-message-bytes", help="Largest request frame accepted."
    ),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds one request may wait."),
    task: str = typer.Option("", "--task", help="Every row's task name (multi-task pools)."),
    max_in_flight: int = typer.Option(64, "--max-in-flight", help="Requests in the pool at once."),
    api_token_env: str | None = typer.Option(
        None, "--api-token-env", help="Env var holding the token clients send as api_key."
    ),
    api_token_file: Path | None = typer.Option(
        None, "--api-token-file", help="File holding that token."
    ),
    redis_url: str | None = REDIS_URL_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
    metrics_port: int = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
) -> None:
    """Serve unmodified openpi websocket clients (openpi-client) from a pool until SIGTERM."""
    from arena_eval.broker.metrics_http import serve_process_metrics
    from arena_eval.sim_worker.gateways.extras import require

    require("websockets", "openpi")
    from arena_eval.sim_worker.gateways.core import GatewayConfig, GatewayCore, load_token
    from arena_eval.sim_worker.gateways.openpi_mapping import KeyMap
    from arena_eval.sim_worker.gateways.openpi_server import OpenpiGateway, OpenpiGatewayConfig
    from arena_eval.sim_worker.gateways.readiness import spec_check

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    if max_message_bytes < 1024:
        raise typer.BadParameter("at least 1024 bytes", param_hint="--max-message-bytes")
    extra = _metadata(metadata)
    keymap = KeyMap.build(key, map_file)
    token = load_token(api_token_env, api_token_file)
    settings = settings_for(redis_url)
    core = GatewayCore(
        GatewayConfig(
            pool=pool, protocol="openpi", address=f"ws://{host}:{port}", timeout_s=timeout,
            max_in_flight=max_in_flight, task=task, redis=settings,
        )
    )  # fmt: skip
    serve_process_metrics("gateway", settings, port=metrics_port, host=metrics_host,
                          checks=(spec_check(core),))  # fmt: skip
    config = OpenpiGatewayConfig(
        host=host, port=port, max_message_bytes=max_message_bytes, metadata=extra,
        keymap=keymap, api_token=token,
    )  # fmt: skip

    def announce(gateway: OpenpiGateway) -> None:
        console.print(
            f"openpi gateway on [bold]ws://{esc(host)}:{gateway.port}[/] -> pool "
            f"[bold]{esc(pool)}[/] on {esc(settings.masked_url())} "
            f"(/healthz, /readyz; max message {max_message_bytes} bytes)",
            highlight=False,
        )

    OpenpiGateway(core, config).run(on_ready=announce)


def _metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--metadata is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError('--metadata must be a JSON object, e.g. \'{"robot": "aloha"}\'')
    return data

"""``arena-eval gateway zmq|openpi``: serve peers' unmodified clients from a pool.

This module only parses options and hands off to ``arena_eval.sim_worker.gateways``
(the ZeroMQ gateway here; ``openpi`` is ``gateway_openpi_cmd``). The API token
is read from an environment variable or a file, never from the command line,
where ``ps`` would show it to every user of the host.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from arena_eval.cli.common import REDIS_URL_OPTION, console, esc, settings_for
from arena_eval.cli.gateway_openpi_cmd import openpi_cmd
from arena_eval.cli.metrics_cmd import METRICS_HOST_OPTION, METRICS_PORT_OPTION
from arena_eval.sim_worker.gateways.core import GatewayConfig

app = typer.Typer(
    help="Serve GR00T / IsaacLab-Arena ZeroMQ clients or openpi websocket clients from a pool.",
    no_args_is_help=True,
)
app.command("openpi")(openpi_cmd)

_DEFAULTS = GatewayConfig(pool="-", protocol="zmq", address="-")


@app.command("zmq")
def zmq_cmd(
    pool: str = typer.Option(..., "--pool", help="Pool whose policy workers answer."),
    bind: str = typer.Option(
        "tcp://0.0.0.0:5555", "--bind", help="ZeroMQ endpoint to bind (tcp://HOST:PORT)."
    ),
    api_token_env: str | None = typer.Option(
        None, "--api-token-env", help="Env var holding the token clients must send (api_token)."
    ),
    api_token_file: Path | None = typer.Option(
        None, "--api-token-file", help="File holding that token."
    ),
    timeout: float = typer.Option(
        _DEFAULTS.timeout_s, "--timeout", min=0.1, help="Seconds a request may wait for the pool."
    ),
    task: str = typer.Option(_DEFAULTS.task, "--task", help="Every row's task (multi-task pools)."),
    max_in_flight: int = typer.Option(
        _DEFAULTS.max_in_flight, "--max-in-flight", min=1, help="Requests in the pool at once."
    ),
    idle_timeout: float = typer.Option(
        _DEFAULTS.idle_timeout_s,
        "--idle-timeout",
        min=0.1,
        help="Close the pool stream of a client silent this many seconds (its session stays).",
    ),
    max_message_bytes: int = typer.Option(
        _DEFAULTS.max_message_bytes,
        "--max-message-bytes",
        min=1024,
        help="Largest request accepted; a bigger one drops its connection unread.",
    ),
    gateway_id: str | None = typer.Option(
        None,
        "--gateway-id",
        help="Name shown by `arena-eval workers`.",
        show_default="gw-zmq-host-pid-random",
    ),
    redis_url: str | None = REDIS_URL_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every refused request."),
    metrics_port: int = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
) -> None:
    """Serve GR00T (REQ), IsaacLab-Arena v1 (REQ) and v2 (DEALER) clients until SIGTERM."""
    from arena_eval.broker.connection import connect, ping
    from arena_eval.broker.metrics_http import serve_process_metrics
    from arena_eval.sim_worker.gateways.extras import require

    require("zmq", "ZeroMQ")
    from arena_eval.sim_worker.gateways.core import GatewayCore, load_token
    from arena_eval.sim_worker.gateways.readiness import spec_check
    from arena_eval.sim_worker.gateways.zmq_gateway import run_zmq_gateway

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    token = load_token(api_token_env, api_token_file)
    settings = settings_for(redis_url)
    ping(connect(settings), settings)
    config = GatewayConfig(
        pool=pool, protocol="zmq", address=bind, timeout_s=timeout, task=task,
        max_in_flight=max_in_flight, idle_timeout_s=idle_timeout, gateway_id=gateway_id,
        max_message_bytes=max_message_bytes, redis=settings,
    )  # fmt: skip
    core = GatewayCore(config)
    serve_process_metrics("gateway", settings, port=metrics_port, host=metrics_host,
                          checks=(spec_check(core),))  # fmt: skip

    def say_serving(address: str) -> None:
        console.print(
            f"gateway zmq [bold]{esc(core.gateway_id)}[/] for pool {esc(pool)} on {esc(address)} "
            f"({'token required' if token else 'no token'}); Redis {esc(settings.masked_url())}",
            highlight=False,
        )

    run_zmq_gateway(core, bind, token, on_ready=say_serving)
    console.print("gateway stopped", highlight=False)

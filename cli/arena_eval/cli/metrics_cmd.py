"""``arena-eval metrics serve`` and the ``--metrics-port``/``--metrics-host`` options of workers.

Parsing only: the fleet exporter is ``broker.fleet_metrics``, a worker's own
endpoint ``broker.metrics_http`` (docs/metrics.md lists every metric).
"""

from __future__ import annotations

from typing import Any

import typer

from arena_eval.cli.common import REDIS_URL_OPTION, console, esc, settings_for

METRICS_PORT_OPTION: Any = typer.Option(
    0,
    "--metrics-port",
    min=0,
    max=65535,
    help="Serve /metrics, /healthz and /readyz on this port (0: off).",
)
METRICS_HOST_OPTION: Any = typer.Option(
    "127.0.0.1",
    "--metrics-host",
    help="Address the metrics port binds (loopback unless you open it on purpose).",
)

app = typer.Typer(help="Prometheus metrics for the whole fleet.", no_args_is_help=True)


@app.command("serve")
def serve_cmd(
    port: int = typer.Option(9464, "--port", min=1, max=65535, help="Port for /metrics."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    jobs: int = typer.Option(50, "--jobs", min=0, help="Export the newest this many jobs."),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """One exporter for every pool, worker, gateway and job, read from Redis at scrape time."""
    from arena_eval.broker import fleet_metrics

    settings = settings_for(redis_url)

    def announce(address: tuple[str, int]) -> None:
        console.print(
            f"fleet metrics on http://{esc(address[0])}:{address[1]}/metrics for "
            f"{esc(settings.masked_url())}",
            highlight=False,
        )

    fleet_metrics.serve(settings, host=host, port=port, jobs=jobs, on_ready=announce)

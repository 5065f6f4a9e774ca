"""``arena-eval sim serve``: run one sim worker until SIGTERM/SIGINT.

The loop itself lives in ``arena_eval.sim_worker.service``; this module only
parses options (bad ones are usage errors before anything starts) and prints one
line once the worker has reached Redis, and one when it stops. Every option's
default is ``SimWorkerConfig``'s, so ``sim serve``, ``up``/``demo`` and the
Python API build the same worker.
"""

from __future__ import annotations

import logging

import typer

from arena_eval.cli.common import REDIS_URL_OPTION, console, esc, settings_for
from arena_eval.cli.metrics_cmd import METRICS_HOST_OPTION, METRICS_PORT_OPTION
from arena_eval.sim_worker.config import SimWorkerConfig
from arena_eval.sim_worker.envs.gym_env import Vectorization

app = typer.Typer(
    help="Run sim workers (they step envs for evaluation jobs).", no_args_is_help=True
)


_DEFAULTS = SimWorkerConfig()


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    num_envs: int = typer.Option(
        _DEFAULTS.num_envs,
        "--num-envs",
        min=1,
        help="Env slots: the default, and the maximum a job may ask for.",
    ),
    lease_ms: int = typer.Option(
        _DEFAULTS.lease_ms,
        "--lease-ms",
        min=100,
        help="A unit idle this long (its worker died) is taken over.",
    ),
    policy_timeout_s: float = typer.Option(
        _DEFAULTS.policy_timeout_s,
        "--policy-timeout",
        min=0.1,
        help="Seconds to wait for one policy answer.",
    ),
    max_deliveries: int = typer.Option(
        _DEFAULTS.max_deliveries,
        "--max-deliveries",
        min=1,
        help="Fail a job whose unit killed this many workers.",
    ),
    vectorization: Vectorization = typer.Option(
        Vectorization(_DEFAULTS.vectorization),
        "--vectorization",
        help="Step the env slots in this process (sync) or one subprocess each (async).",
    ),
    overlap: bool = typer.Option(
        _DEFAULTS.overlap,
        "--overlap/--no-overlap",
        help="Double-buffer the rollout: half the env slots step while the other half's "
        "policy request is in flight (needs 2+ slots; results are the same).",
    ),
    worker_id: str | None = typer.Option(
        _DEFAULTS.worker_id,
        "--worker-id",
        help="Name shown by `arena-eval workers`.",
        show_default="host-pid-random",
    ),
    burst: bool = typer.Option(False, "--burst", help="Exit when no unit is queued or pending."),
    redis_url: str | None = REDIS_URL_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every unit."),
    metrics_port: int = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
) -> None:
    """Take work units of evaluation jobs from Redis and run them, until SIGTERM/SIGINT."""
    from arena_eval.broker.connection import connect, ping
    from arena_eval.broker.metrics_http import serve_process_metrics
    from arena_eval.sim_worker.service import SimWorker, serve

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_for(redis_url)
    # the parsed options, by name: exactly what a test that parses `sim serve` sees
    config = SimWorkerConfig.from_options(ctx.params, settings)
    serve_process_metrics("sim", settings, port=metrics_port, host=metrics_host, needs=("env",))
    client = connect(settings)
    ping(client, settings)
    worker = SimWorker.from_config(config, client=client)

    def say_serving() -> None:
        console.print(
            f"sim worker [bold]{esc(worker.worker_id)}[/] ({config.num_envs} env slots, "
            f"lease {config.lease_ms} ms{', overlapped' if config.overlap else ''}) "
            f"on {esc(settings.masked_url())}",
            highlight=False,
        )

    handled = serve(worker, burst=burst, on_joined=say_serving)
    console.print(f"stopped after {handled} units", highlight=False)

"""The root Typer app: one sub-app per area, combined with ``add_typer``.

``main`` is the console-script entry point. It turns every ``ArenaEvalError``
into one readable line on stderr and exit status 1, instead of a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import typer
from rich.console import Console

from arena_eval import __version__
from arena_eval.broker.errors import ArenaEvalError

app = typer.Typer(
    name="arena-eval",
    help="Evaluation fabric for robot policies over Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"arena-eval {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Evaluation fabric for robot policies over Redis Streams."""


def _register_subcommands() -> None:
    # Imported here so that each area stays in its own module.
    from arena_eval.cli import bench_cmd, job_cmd, policy_cmd, redis_cmd, sim_cmd, stack_cmd

    app.add_typer(redis_cmd.app, name="redis")
    app.add_typer(bench_cmd.app, name="bench")
    app.add_typer(policy_cmd.app, name="policy")
    app.command("pools")(policy_cmd.pools_cmd)
    app.add_typer(sim_cmd.app, name="sim")
    for name, command in job_cmd.COMMANDS.items():
        app.command(name)(command)
    app.command("up")(stack_cmd.up_cmd)
    app.command("demo")(stack_cmd.demo_cmd)


_register_subcommands()


def main() -> None:
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int):
            sys.exit(rc)
    except ArenaEvalError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        if isinstance(exc, _click_exceptions()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, typer.Abort):
            err_console.print("aborted")
            sys.exit(1)
        raise


def _click_exceptions() -> tuple[type[Exception], ...]:
    """``ClickException``: recent Typer vendors click as ``typer._click`` (and click need not be
    installed at all); older Typer raises click's own."""
    found: list[type[Exception]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(importlib.import_module(module).ClickException)
    return tuple(found)

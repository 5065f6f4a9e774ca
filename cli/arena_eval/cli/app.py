"""The root Typer app: one sub-app per area, combined with ``add_typer``.

``main`` is the console-script entry point. It turns every ``ArenaEvalError``
into one readable line on stderr and exit status 1, instead of a traceback. An
ACL denial (NOPERM) gets the role the command needs (docker/ACL.md) next to
the user that was denied. Error text is printed as plain text, never as rich
markup: it is full of job ids, task names and server replies.

Flags take no value, so their help shows no type: typer 0.29 prints ``<bool>``
next to every flag (``--help`` included), which reads as if one had to be given.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from importlib.metadata import version
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperOption

from arena_eval.broker.errors import ArenaEvalError, BrokerPermissionError

app = typer.Typer(
    name="arena-eval",
    help="Evaluation fabric for robot policies over Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _flag_shows_no_type() -> None:
    shows_type = TyperOption.display_type_rich
    if getattr(shows_type, "hides_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shows_type(self, ctx)

    display_type_rich.hides_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flag_shows_no_type()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"arena-eval {version('arena-eval')}")
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
    for name, group in job_cmd.GROUPS.items():
        app.add_typer(group, name=name)
    app.command("up")(stack_cmd.up_cmd)
    app.command("demo")(stack_cmd.demo_cmd)
    app.command("report")(importlib.import_module("arena_eval.cli.report_cmd").report_cmd)
    app.add_typer(importlib.import_module("arena_eval.cli.gateway_cmd").app, name="gateway")
    app.add_typer(importlib.import_module("arena_eval.cli.train_cmd").app, name="train")
    app.add_typer(importlib.import_module("arena_eval.cli.metrics_cmd").app, name="metrics")


_register_subcommands()


#: The docker/users.acl role each command needs; every other command needs ``admin``.
#: Commands a worker role may run; anything else needs ``admin``. A gateway is a sim-side
#: process: the ``sim`` role covers every key it touches (docker/ACL.md).
ROLE_FOR_COMMAND = {
    ("policy", "serve"): "policy",
    ("sim", "serve"): "sim",
    ("gateway", "zmq"): "sim",
    ("gateway", "openpi"): "sim",
}


def required_role(argv: list[str]) -> tuple[str, str]:
    """The command as typed (e.g. ``sim serve``) and the role it needs."""
    words = [a for a in argv if not a.startswith("-")]
    pair = (words[0], words[1]) if len(words) > 1 else None
    if pair in ROLE_FOR_COMMAND:
        return " ".join(pair), ROLE_FOR_COMMAND[pair]
    return (words[0] if words else ""), "admin"


def _denied(user: str | None, detail: str) -> str:
    command, role = required_role(sys.argv[1:])
    who = f"Redis user {user!r}" if user else "the Redis user"
    return (
        f"{who} may not run `arena-eval {command}` ({detail}). It needs the {role!r} role "
        f"(docker/ACL.md): connect as a user with it, e.g. redis://{role}:PASSWORD@host:port "
        "in ARENA_REDIS_URL."
    )


def print_error(message: str) -> None:
    """One line on stderr; ``message`` is plain text, never parsed as markup."""
    err_console.print(Text.assemble(("error: ", "bold red"), message))


def main() -> None:
    from redis.exceptions import ResponseError

    from arena_eval.broker.connection import is_permission_error

    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int):
            sys.exit(rc)
    except BrokerPermissionError as exc:
        print_error(_denied(exc.user, exc.detail))
        sys.exit(1)
    except ArenaEvalError as exc:
        print_error(str(exc))
        sys.exit(1)
    except ResponseError as exc:  # a client not built by connect(): still no traceback
        if not is_permission_error(exc):
            raise
        print_error(_denied(None, str(exc)))
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

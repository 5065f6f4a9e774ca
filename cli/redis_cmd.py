"""``arena-eval redis ...``: placeholder until the embedded server lands."""

import typer

app = typer.Typer(help="Manage the embedded Redis server and talk to the configured one.")

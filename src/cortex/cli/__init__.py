"""The ``cortex`` command line: one module per command group, all over `cortex.sdk`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cortex.cli import (
    artifacts,
    browser,
    ca,
    cluster,
    files,
    mcp,
    nodes,
    run,
    serve,
    tasks,
    tenants,
    tokens,
)
from cortex.cli._common import CortexGroup, Globals

__all__ = ["app", "main"]

app = typer.Typer(
    name="cortex",
    cls=CortexGroup,
    help="Drive a fleet of machines: run commands on nodes, watch them, manage the hub.",
    no_args_is_help=True,
    add_completion=False,
    # Locals would print the API token in a traceback.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from cortex import __version__

        typer.echo(f"cortex {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    hub: Annotated[str | None, typer.Option(
        "--hub", metavar="HOST:PORT[,...]", help="The hub's gRPC address; several "
        "(comma-separated) are balanced round robin \\[env: CORTEX_HUB].",
        show_default=False)] = None,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", help="API token \\[env: CORTEX_TOKEN].",
        show_default=False)] = None,
    ca: Annotated[Path | None, typer.Option(
        "--ca", metavar="PATH", help="PEM file of the CA that signed the hub's certificate "
        "\\[env: CORTEX_CA].", show_default=False)] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", metavar="DIR", help="Where client.json is \\[env: CORTEX_HOME; "
        "default: ~/.cortex].", show_default=False)] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Without --hub/--token, the hub that `cortex up` started here (client.json) is used."""
    ctx.obj = Globals(hub=hub, token=token, ca=ca, home=home)


run.register(app)
app.add_typer(tasks.app, name="tasks")
app.add_typer(nodes.app, name="nodes")
app.add_typer(tokens.app, name="token")
app.add_typer(tenants.tenants, name="tenant")
app.add_typer(tenants.pools, name="pool")
app.add_typer(artifacts.app, name="artifacts")
files.register(app)
app.add_typer(ca.app, name="ca")
app.add_typer(browser.app, name="browser")
app.add_typer(cluster.app, name="cluster")
serve.register(app)
mcp.register(app)


def main() -> None:
    """Entry point of the ``cortex`` console script."""
    app()

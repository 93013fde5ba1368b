"""``cortex mcp``: serve Cortex's tools to an AI agent over MCP (stdio)."""

from __future__ import annotations

import typer

from cortex.cli._common import client_config, note, run_async

__all__ = ["register"]

HELP = """Serve Cortex to an AI agent as an MCP server on stdin/stdout.

An MCP client starts it as a subprocess: [bold]{"command": "cortex", "args": ["mcp"]}[/bold].
Every call uses the API token from --token / CORTEX_TOKEN (or the local hub's
client.json): the token's tenant and role bound what the agent can do. See docs/mcp.md.
"""


def register(app: typer.Typer) -> None:
    app.command("mcp", help=HELP)(mcp)


def mcp(ctx: typer.Context) -> None:
    config = client_config(ctx)  # a missing hub or token fails here, before serving
    # Imported here: the MCP stack is big, and no other command needs it.
    from cortex.mcp import serve_stdio

    note(f"MCP server on stdio for hub {config.address}")  # stderr: stdout is the protocol's
    run_async(serve_stdio(config))

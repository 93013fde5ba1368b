"""``cortex token``: join tokens that let another machine become a node."""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from typing import Annotated

import typer

from cortex.cli._common import (
    client_config,
    err_console,
    human_duration,
    print_json,
    run_async,
    usage,
)
from cortex.errors import InvalidArgument
from cortex.sdk import Client, ClientConfig, JoinToken, parse_duration, parse_labels

__all__ = ["app", "join_address"]

app = typer.Typer(help="Create join tokens for new nodes.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    ttl: Annotated[str, typer.Option(
        "--ttl", metavar="DURATION", help="How long the token stays valid: 90s, 15m, 1h, 2d.")
    ] = "1h",
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="K=V", help="A label the joining node gets (repeatable).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a one-time join token; stdout is the token alone, the hint goes to stderr."""
    ttl_s = usage(_positive_duration, ttl, flag="'--ttl'")
    labels = usage(parse_labels, label, flag="'--label' / '-l'")
    config = client_config(ctx)
    token = run_async(_create(config, ttl_s, labels))
    command = f"cortex node --hub {join_address(config.address)} --token {token.token}"
    if as_json:
        print_json({"token": token.token, "expires_at": token.expires_at,
                    "join_command": command})
        return
    sys.stdout.write(token.token + "\n")
    sys.stdout.flush()
    left = human_duration(max(0.0, token.expires_at - time.time()))
    err_console.print(f"join another machine (within {left}): {command}", markup=False)


def _positive_duration(value: str) -> float:
    seconds = parse_duration(value, what="ttl")
    if seconds <= 0:
        raise InvalidArgument(f"ttl must be more than 0 s, got {value!r}")
    return seconds


async def _create(config: ClientConfig, ttl_s: float, labels: dict[str, str]) -> JoinToken:
    async with Client(config) as client:
        return await client.create_join_token(ttl=ttl_s, labels=labels)


def join_address(address: str) -> str:
    """The hub address as another machine should dial it: a loopback host becomes this host's
    name (the address the hub listens on must be reachable from there, too)."""
    host, _, port = address.rpartition(":")
    bare = host.strip("[]")
    try:
        loopback = bare == "localhost" or ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    return f"{socket.gethostname()}:{port}" if loopback else address

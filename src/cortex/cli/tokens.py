"""``cortex token``: API tokens (create, ls, revoke) and join tokens for new nodes."""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from cortex.cli._common import (
    ago,
    client_config,
    err_console,
    human_duration,
    out_console,
    print_json,
    run_async,
    to_dict,
    usage,
)
from cortex.core.addresses import parse_addresses
from cortex.errors import InvalidArgument
from cortex.sdk import Admin, Client, ClientConfig, JoinToken, parse_duration, parse_labels

__all__ = ["app", "join_address", "with_admin"]

_T = TypeVar("_T")

app = typer.Typer(help="API tokens of your tenant, and join tokens for new nodes.",
                  no_args_is_help=True)

_ROLES_HELP = ("admin (everything in the tenant), operator (tasks and nodes), agent (run "
               "tasks), viewer (read only); hub-admin (tenants) only from a hub-admin")


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="What the token is for.")],
    role: Annotated[str, typer.Option("--role", "-r", metavar="ROLE", help=_ROLES_HELP)
    ] = "agent",
    ttl: Annotated[str | None, typer.Option(
        "--ttl", metavar="DURATION", help="Expire after this long (default: never).",
        show_default=False)] = None,
    tenant: Annotated[str | None, typer.Option(
        "--tenant", metavar="TENANT", help="Another tenant (hub-admin only).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API token; stdout is the secret alone (shown this once, stored hashed)."""
    ttl_s = usage(_positive_duration, ttl, flag="'--ttl'") if ttl else 0.0
    config = client_config(ctx)
    new = run_async(with_admin(config, lambda a: a.create_api_token(
        name, role=role, ttl=ttl_s, tenant=tenant or "")))
    if as_json:
        print_json({"secret": new.secret, **to_dict(new.token)})
        return
    sys.stdout.write(new.secret + "\n")
    sys.stdout.flush()
    expiry = (f"expires in {human_duration(new.token.expires_at - time.time())}"
              if new.token.expires_at else "never expires")
    err_console.print(f"token {new.token.id} ({new.token.role} of tenant {new.token.tenant}, "
                      f"{expiry}): keep the secret; it cannot be shown again", markup=False)


@app.command("ls")
def list_tokens(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(
        "--tenant", metavar="TENANT", help="Another tenant (hub-admin only).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the tenant's API tokens (never their secrets)."""
    config = client_config(ctx)
    tokens = run_async(with_admin(config, lambda a: a.list_api_tokens(tenant=tenant or "")))
    if as_json:
        print_json([to_dict(t) for t in tokens])
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "NAME", "ROLE", "TENANT", "CREATED", "EXPIRES", "STATE"):
        table.add_column(column, overflow="fold")
    for t in tokens:
        state = ("revoked" if t.revoked_at else
                 "expired" if t.expires_at and t.expires_at <= now else "active")
        table.add_row(t.id, t.name, t.role, t.tenant, ago(t.created_at, now=now),
                      _expires(t.expires_at, now), state)
    out_console.print(table)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The id `cortex token ls` shows.")],
    tenant: Annotated[str | None, typer.Option(
        "--tenant", metavar="TENANT", help="Another tenant (hub-admin only).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Revoke an API token: it stops working at once on this hub (within 5 s on others)."""
    config = client_config(ctx)
    token = run_async(with_admin(config, lambda a: a.revoke_api_token(
        token_id, tenant=tenant or "")))
    if as_json:
        print_json(to_dict(token))
        return
    err_console.print(f"revoked token {token.id} ({token.name}, {token.role})", markup=False)


@app.command("join")
def join(
    ctx: typer.Context,
    ttl: Annotated[str, typer.Option(
        "--ttl", metavar="DURATION", help="How long the token stays valid: 90s, 15m, 1h, 2d.")
    ] = "1h",
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="K=V", help="A label the joining node gets (repeatable).",
        show_default=False)] = None,
    pool: Annotated[str, typer.Option(
        "--pool", "-p", metavar="POOL", help="The node pool the node joins.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a one-time join token; stdout is the token alone, the hint goes to stderr."""
    ttl_s = usage(_positive_duration, ttl, flag="'--ttl'")
    labels = usage(parse_labels, label, flag="'--label' / '-l'")
    config = client_config(ctx)
    token = run_async(_create(config, ttl_s, labels, pool))
    command = f"cortex node --hub {join_address(config.address)} --token {token.token}"
    if as_json:
        print_json({"token": token.token, "expires_at": token.expires_at, "pool": pool,
                    "join_command": command})
        return
    sys.stdout.write(token.token + "\n")
    sys.stdout.flush()
    left = human_duration(max(0.0, token.expires_at - time.time()))
    err_console.print(f"join another machine to pool {pool} (within {left}): {command}",
                      markup=False)


def _expires(at: float, now: float) -> str:
    if not at:
        return "never"
    return f"in {human_duration(at - now)}" if at > now else ago(at, now=now)


async def with_admin(config: ClientConfig, call: Callable[[Admin], Awaitable[_T]]) -> _T:
    async with Client(config) as client:
        return await call(client.admin)


def _positive_duration(value: str) -> float:
    seconds = parse_duration(value, what="ttl")
    if seconds <= 0:
        raise InvalidArgument(f"ttl must be more than 0 s, got {value!r}")
    return seconds


async def _create(config: ClientConfig, ttl_s: float, labels: dict[str, str], pool: str
                  ) -> JoinToken:
    async with Client(config) as client:
        return await client.create_join_token(ttl=ttl_s, labels=labels, pool=pool)


def join_address(address: str) -> str:
    """The hub address as another machine should dial it: a loopback host becomes this host's
    name (the address the hub listens on must be reachable from there, too). Each entry of
    a list (several hubs) is treated alike."""
    if "," in address:
        return ",".join(join_address(a) for a in parse_addresses(address))
    host, _, port = address.rpartition(":")
    bare = host.strip("[]")
    try:
        loopback = bare == "localhost" or ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    return f"{socket.gethostname()}:{port}" if loopback else address

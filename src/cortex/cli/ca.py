"""``cortex ca``: the hub's certificate authority — its chain, expiry dates, rotation."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from cortex.cli._common import client_config, human_duration, out_console, print_json, run_async
from cortex.cli._common import to_dict as _to_dict
from cortex.sdk import Client, ClientConfig

__all__ = ["app"]

app = typer.Typer(help="The hub's certificate authority (admin tokens only).",
                  no_args_is_help=True)


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the CA chain with expiry dates and which nodes still hold older certificates."""
    resp = run_async(_call(client_config(ctx), "status"))
    _show(resp, as_json=as_json)


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    root: Annotated[bool, typer.Option(
        "--root", help="Also make a new root CA, cross-signed by the current one.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Introduce a new issuing intermediate (and a new root with --root), with no downtime.

    The hub starts serving the new chain at once; nodes renew onto it and receive the new
    trust bundle as they do; old CA certificates retire once nothing valid depends on them.
    """
    resp = run_async(_call(client_config(ctx), "rotate", root=root))
    _show(resp, as_json=as_json)


async def _call(config: ClientConfig, what: str, *, root: bool = False) -> Any:
    async with Client(config) as client:
        if what == "rotate":
            return await client.rotate_ca(root=root)
        return await client.ca_status()


def _show(resp: Any, *, as_json: bool) -> None:
    if as_json:
        print_json(_to_dict(resp))
        return
    now = time.time()
    chain = Table(box=None, pad_edge=False, title="certificate authorities", title_justify="left")
    for column in ("NAME", "KIND", "SIGNED BY", "STATE", "NOT AFTER", "EXPIRES IN",
                   "FINGERPRINT"):
        chain.add_column(column, overflow="fold")
    for a in resp.authorities:
        state = "retired" if a.retired else ("active" if a.active else "trusted")
        chain.add_row(a.name, a.kind, a.signed_by, state, _date(a.not_after),
                      human_duration(max(0.0, a.not_after - now)), a.fingerprint[:23] + "…")
    out_console.print(chain)
    out_console.print(f"new node certificates: issuer {resp.issuer}, lifetime "
                      f"{human_duration(resp.node_cert_ttl_s)}, re-enrollment grace "
                      f"{human_duration(resp.reenroll_grace_s)}; join tokens pin "
                      f"{resp.fingerprint}", markup=False)
    old = [c for c in resp.certificates if not c.current]
    nodes = Table(box=None, pad_edge=False, title_justify="left",
                  title=f"node certificates ({len(old)} from an older issuer)")
    for column in ("NODE", "POOL", "ISSUER", "CURRENT", "NOT AFTER", "SERIAL"):
        nodes.add_column(column, overflow="fold")
    for c in resp.certificates:
        nodes.add_row(c.node_id, c.pool, c.issuer, "yes" if c.current else "no",
                      _date(c.not_after), c.serial)
    out_console.print(nodes)


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))

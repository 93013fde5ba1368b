"""``cortex nodes``: the machines connected to (or known by) the hub."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from cortex.cli._common import (
    ago,
    client_config,
    out_console,
    print_json,
    run_async,
    to_dict,
    usage,
)
from cortex.sdk import Client, ClientConfig, Node, NodeState, parse_labels, parse_node_state

__all__ = ["app", "format_labels"]

app = typer.Typer(help="List and revoke the nodes that run tasks.", no_args_is_help=True)

_STATE_STYLE = {NodeState.ONLINE: "green", NodeState.OFFLINE: "dim", NodeState.DRAINING: "yellow",
                NodeState.REVOKED: "red"}


@app.command("ls")
def list_nodes(
    ctx: typer.Context,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="K=V", help="Nodes carrying this label (repeatable).",
        show_default=False)] = None,
    skill: Annotated[str | None, typer.Option(
        "--skill", metavar="SKILL", help="Nodes offering this skill (shell, browser, ...).",
        show_default=False)] = None,
    state: Annotated[list[str] | None, typer.Option(
        "--state", "-s", metavar="STATE", help="online, offline, draining or revoked "
        "(repeatable).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """List nodes with their capacity, load and when they were last heard from."""
    labels = usage(parse_labels, label, flag="'--label' / '-l'")
    states = [usage(parse_node_state, s, flag="'--state' / '-s'") for s in state or ()]
    config = client_config(ctx)
    nodes = run_async(_list(config, labels=labels, skill=skill, states=states))
    if as_json:
        print_json([to_dict(n) for n in nodes])
        return
    now = time.time()
    table = Table(box=None, pad_edge=False)
    pools = any((n.pool or "default") != "default" for n in nodes)  # a column only if useful
    for column in ("ID", "NAME", *(("POOL",) if pools else ()), "STATE", "LABELS", "SKILLS",
                   "CPUS", "MEMORY", "LOAD",
                   "RUNNING", "VERSION", "LAST SEEN"):
        table.add_column(column, overflow="fold")
    for n in nodes:
        table.add_row(
            n.id, n.name or "-", *((n.pool or "default",) if pools else ()), _state(n),
            format_labels(n.labels),
            ", ".join(n.skills) or "-",
            f"{n.capacity.cpus:g}" if n.capacity.cpus else "-",
            _mib(n.capacity.memory_mib), f"{n.load.load1:.2f}", str(n.running_tasks),
            n.version or "-", ago(n.last_seen, now=now),
        )
    out_console.print(table)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    node_id: Annotated[str, typer.Argument(metavar="NODE_ID", help="The node to revoke.")],
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT",
                                        help="Why (recorded with the revocation).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Revoke a node (admin): cut its stream, fail its running tasks over, refuse it since.

    The machine can only come back by enrolling again with a new join token.
    """
    resp = run_async(_revoke(client_config(ctx), node_id, reason))
    if as_json:
        print_json(to_dict(resp))
        return
    out_console.print(
        f"revoked node {resp.node_id}: {resp.certificates_revoked} certificate(s), "
        f"{resp.tasks_lost} running task(s) failed over as lost"
        f"{', live stream cut' if resp.was_connected else ' (it was not connected)'}",
        markup=False)


async def _revoke(config: ClientConfig, node_id: str, reason: str) -> Any:
    async with Client(config) as client:
        return await client.revoke_node(node_id, reason=reason)


async def _list(config: ClientConfig, *, labels: dict[str, str], skill: str | None,
                states: list[NodeState.ValueType]) -> list[Node]:
    async with Client(config) as client:
        return await client.list_nodes(labels=labels, skill=skill, states=states)


def format_labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _state(node: Node) -> Text:
    name = NodeState.Name(node.state).lower() if node.state else "-"
    return Text(name, style=_STATE_STYLE.get(node.state, ""))


def _mib(mib: int) -> str:
    if not mib:
        return "-"
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib} MiB"

"""``cortex cluster up`` / ``status``: several hubs, HAProxy and a node on this machine."""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cortex.cli._common import out_console, print_json, usage
from cortex.core.addresses import split_host_port
from cortex.errors import InvalidArgument

if TYPE_CHECKING:
    from cortex.cluster.haproxy import Backend

__all__ = ["app"]

app = typer.Typer(help="Try out a cluster on one machine: N hubs on Postgres behind HAProxy.",
                  no_args_is_help=True)

_STATE = "state.json"


def _home(home: Path | None) -> Path:
    return (home or Path(os.environ.get("CORTEX_HOME") or Path.home() / ".cortex")).expanduser()


@app.command("up")
def up(
    hubs: Annotated[int, typer.Option("--hubs", help="How many hubs.")] = 3,
    store: Annotated[str, typer.Option(
        "--store", help="PostgreSQL URL every hub uses.")] = "postgresql://postgres@127.0.0.1:5432/test",
    schema: Annotated[str, typer.Option(
        "--schema", help="Schema in that database (created if missing); '' = the URL's "
        "search_path.")] = "cortex_cluster",
    host: Annotated[str, typer.Option("--host", help="Where HAProxy listens.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", help="Balancer port for clients and enrollment; 0 = any.")] = 7443,
    node_port: Annotated[int, typer.Option(
        "--node-port", help="Balancer port for nodes; 0 = any.")] = 7444,
    node: Annotated[bool, typer.Option("--node/--no-node",
                                       help="Start one local node.")] = True,
    fs_root: Annotated[list[str] | None, typer.Option(
        "--fs-root", help="A directory cortex cp / cortex fs may touch on the node.")] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", help="Data dir (default $CORTEX_HOME); the cluster lives in <home>/cluster.")
    ] = None,
) -> None:
    """Start N hubs on Postgres (shared CA and artifact dirs), HAProxy in front and a node;
    write client.json naming the balancer; Ctrl-C stops everything."""
    from cortex.cluster.up import Cluster, ClusterSpec

    spec = ClusterSpec(home=_home(home), hubs=hubs, store=store, schema=schema, host=host,
                       port=port, node_port=node_port, node=node,
                       fs_roots=tuple(os.path.abspath(r) for r in fs_root or ()))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(spec)
    cluster.start()
    state = spec.root / _STATE
    try:
        state.write_text(json.dumps({
            "pid": os.getpid(), "address": cluster.client_address,
            "node_address": cluster.node_address, "node_id": cluster.node_id,
            "hubs": [{"name": h.name, "port": h.port, "node_port": h.node_port,
                      "http_port": h.http_port} for h in cluster.hubs]}, indent=2))
        lines = "\n".join(f"  {h.name}: clients 127.0.0.1:{h.port}, nodes 127.0.0.1:"
                          f"{h.node_port}, http http://127.0.0.1:{h.http_port}"
                          for h in cluster.hubs)
        node_line = f", node {cluster.node_id} connected" if cluster.node_id else ""
        print(f"cortex cluster up: balancer clients {cluster.client_address}, nodes "
              f"{cluster.node_address}; {len(cluster.hubs)} hubs{node_line}\n{lines}\n"
              f"  logs and data: {spec.root}\n"
              "  In another terminal: cortex run -- echo hi   (client.json names the "
              "balancer)\n  Ctrl-C stops everything.", flush=True)
        reported: set[str] = set()
        while not stop.wait(0.5):
            for dead in cluster.dead():
                if dead not in reported:
                    reported.add(dead)
                    print(f"cortex cluster: {dead}", flush=True)
    finally:
        print("cortex cluster: stopping the node, the balancer and the hubs", flush=True)
        cluster.stop()
        state.unlink(missing_ok=True)
        print("cortex cluster: stopped", flush=True)


@app.command("status")
def status(
    home: Annotated[Path | None, typer.Option("--home", help="As for `cluster up`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the running cluster's balancer and whether each hub is ready (its /readyz)."""
    path = _home(home) / "cluster" / _STATE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise typer.BadParameter(f"no cluster is running here ({path} is missing): start "
                                 "one with `cortex cluster up`", param_hint="--home") from None
    for hub in info["hubs"]:
        hub["ready"] = _ready(hub["http_port"])
    if as_json:
        print_json(info)
        return
    out_console.print(f"balancer: clients {info['address']}, nodes {info['node_address']} "
                      f"(cluster up pid {info['pid']})", markup=False)
    for hub in info["hubs"]:
        out_console.print(f"  {hub['name']}: {'ready' if hub['ready'] else 'NOT READY'} "
                          f"(clients :{hub['port']}, nodes :{hub['node_port']}, "
                          f"http :{hub['http_port']})", markup=False)


@app.command("haproxy-config")
def haproxy_config(
    hub: Annotated[list[str], typer.Option(
        "--hub", metavar="NAME=HOST:PORT/NODE_PORT[/HTTP_PORT]",
        help="One hub: its client, node and (for /readyz checks) HTTP ports; repeatable.")],
    clients: Annotated[str, typer.Option(
        "--clients", metavar="HOST:PORT", help="Where the balancer takes clients and "
        "enrollments.")] = "0.0.0.0:7443",
    nodes: Annotated[str, typer.Option(
        "--nodes", metavar="HOST:PORT", help="Where the balancer takes nodes.")]
    = "0.0.0.0:7444",
) -> None:
    """Print an haproxy.cfg for these hubs: TCP passthrough, so TLS ends at the hubs."""
    from cortex.cluster.haproxy import Balancer, render

    backends = tuple(usage(_backend, h, flag="--hub") for h in hub)
    balancer = usage(lambda _: Balancer(clients, nodes, backends), None, flag="--hub")
    print(render(balancer), end="")


def _backend(text: str) -> Backend:
    from cortex.cluster.haproxy import Backend

    name, sep, rest = text.partition("=")
    address, _, ports = rest.partition("/")
    parts = ports.split("/") if ports else []
    if not sep or len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise InvalidArgument(f"{text!r} is not NAME=HOST:PORT/NODE_PORT[/HTTP_PORT] "
                              "(e.g. hub-1=10.0.0.1:7443/7444/7445)")
    host, port = split_host_port(address, what=f"hub {name} address")
    return Backend(name, host, port, int(parts[0]), int(parts[1]) if len(parts) == 2 else 0)


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz",
                                    timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False

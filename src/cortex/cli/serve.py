"""`cortex hub`, `cortex node` and `cortex up`: the long-running processes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer

from cortex.errors import CortexError

__all__ = ["register"]


def _setup_logging(verbose: bool, log_format: str = "text", *, service: str = "cortex"
                   ) -> None:
    from cortex.logfmt import FORMATS, setup_logging

    if log_format not in FORMATS:
        raise typer.BadParameter(f"{log_format!r}: pick one of {', '.join(FORMATS)}",
                                 param_hint="'--log-format'")
    setup_logging(verbose=verbose, fmt=log_format)
    from cortex import tracing

    tracing.setup_from_env(service)   # off unless CORTEX_TRACE / OTEL_EXPORTER_OTLP_* ask


def _log_format_option() -> Any:
    return typer.Option("text", "--log-format", envvar="CORTEX_LOG_FORMAT",
                        help="Log lines on stderr: text, or json (one object per line, "
                             "with task_id/node_id when known).")


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"label {item!r} must look like key=value")
        out[key] = value
    return out


def _home(home: Path | None) -> Path:
    return (home or Path(os.environ.get("CORTEX_HOME") or Path.home() / ".cortex")).expanduser()


def register(app: typer.Typer) -> None:
    """Add the hub, node and up commands to the CLI."""

    @app.command("hub")
    def hub_cmd(
        host: str = typer.Option("127.0.0.1", help="Address both gRPC ports listen on."),
        port: int = typer.Option(7443, help="Client and enrollment port (TLS); 0 = any."),
        node_port: int = typer.Option(7444, help="Node port (mutual TLS); 0 = any."),
        http_port: int = typer.Option(7445, help="HTTP port: /healthz, /readyz, /metrics, "
                                      "MCP at /mcp; 0 = any, -1 = off."),
        http_host: str = typer.Option("", help="Address the HTTP port listens on "
                                      "(default: --host)."),
        data_dir: Path | None = typer.Option(None, help="Default: $CORTEX_HOME/hub."),
        store: str = typer.Option("", help="Store URL; default SQLite in the data dir."),
        advertise: list[str] = typer.Option([], help="Extra DNS names/IPs for the hub cert."),
        public_address: str = typer.Option(
            "", metavar="HOST:PORT[,...]", help="Behind a balancer: the client address "
            "client.json names (its hosts join the hub cert's names)."),
        public_node_address: str = typer.Option(
            "", metavar="HOST:PORT[,...]", help="Behind a balancer: the node address "
            "enrolling nodes are told to dial (its hosts join the hub cert's names)."),
        ca_dir: Path | None = typer.Option(None, help="CA directory, shareable by several "
                                           "hubs (one Postgres); default <data-dir>/ca."),
        client_file: Path | None = typer.Option(None, help="Where to write client.json "
                                                "(default: next to the data dir)."),
        hub_id: str = typer.Option("hub-1", help="This hub's id (logs, node welcomes, "
                                   "leases); hubs sharing a Postgres store need distinct "
                                   "ones."),
        lost_after: float = typer.Option(15.0, help="Seconds a silent node keeps its tasks."),
        heartbeat_interval: float = typer.Option(2.0, help="Seconds between node heartbeats."),
        default_timeout: float = typer.Option(86400.0, help="Task deadline when none given."),
        max_output: int = typer.Option(64 * 1024 * 1024, help="Output bytes kept per task."),
        artifact_dir: Path | None = typer.Option(None, help="Blob directory (shareable by "
                                                 "several hubs); default <data-dir>/artifacts."),
        artifact_quota: int = typer.Option(100 * 1024**3, help="Artifact bytes per tenant; "
                                           "0 = unlimited."),
        artifact_ttl: float = typer.Option(30 * 86400.0, help="Seconds an artifact is kept "
                                           "when its upload names no ttl; 0 = keep."),
        node_cert_ttl: float = typer.Option(86400.0, help="Node certificate lifetime, "
                                            "seconds (5 s - 7 days); renewed at 50-67 %."),
        reenroll_grace: float = typer.Option(259200.0, help="Seconds after expiry a node "
                                             "may still re-enroll with its old certificate "
                                             "(0 = never: it needs a new join token)."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
        log_format: str = _log_format_option(),
    ) -> None:
        """Run a hub in the foreground (Ctrl-C stops it cleanly)."""
        from cortex.hub.config import HubConfig
        from cortex.hub.main import run_hub

        _setup_logging(verbose, log_format, service="cortex-hub")
        cfg = HubConfig(data_dir=data_dir or _home(None) / "hub", host=host, port=port,
                        node_port=node_port, http_port=http_port, http_host=http_host,
                        store=store, advertise=tuple(advertise),
                        public_address=public_address,
                        public_node_address=public_node_address, ca_dir=ca_dir,
                        client_file=client_file, hub_id=hub_id,
                        lost_after_s=lost_after, heartbeat_interval_s=heartbeat_interval,
                        default_timeout_s=default_timeout, max_output_bytes=max_output,
                        artifact_dir=artifact_dir, artifact_quota_bytes=artifact_quota,
                        artifact_ttl_s=artifact_ttl,
                        node_cert_ttl_s=node_cert_ttl, reenroll_grace_s=reenroll_grace)
        _run(run_hub(cfg))

    @app.command("node")
    def node_cmd(
        hub: str = typer.Option("", help="Hub HOST:PORT (its client port) to enroll with; "
                                "a comma-separated list is tried in order."),
        node_address: str = typer.Option(
            "", metavar="HOST:PORT[,...]", help="Hub node port(s) to dial, replacing what "
            "enrollment stored; several are tried in turn."),
        token: str = typer.Option("", help="Join token from `cortex token join`."),
        data_dir: Path | None = typer.Option(None, help="Default: $CORTEX_HOME/node."),
        name: str = typer.Option("", help="Node name (default: hostname)."),
        label: list[str] = typer.Option([], "--label", "-l", help="key=value, repeatable."),
        slots: int = typer.Option(64, help="Tasks run at once."),
        gpus: int | None = typer.Option(None, min=0, help="GPUs this node offers (default: "
                                        "the /dev/nvidia<N> devices it has)."),
        drain_grace: float = typer.Option(30.0, help="Seconds running tasks get on SIGTERM."),
        fs_root: list[str] = typer.Option([], "--fs-root", help="A directory cortex cp / "
                                          "cortex fs may touch (repeatable; none = refused)."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
        log_format: str = _log_format_option(),
    ) -> None:
        """Run a node agent: enroll once with --hub/--token, then dial out and serve tasks."""
        from cortex.node.config import NodeConfig
        from cortex.node.main import run_node

        _setup_logging(verbose, log_format, service="cortex-node")
        cfg = NodeConfig(data_dir=data_dir or _home(None) / "node", hub=hub, token=token,
                         node_address=node_address,
                         labels=_labels(label), slots=slots, gpus=gpus,
                         drain_grace_s=drain_grace,
                         fs_roots=tuple(os.path.abspath(r) for r in fs_root))
        if name:
            cfg = dataclasses.replace(cfg, name=name)
        _run(run_node(cfg))

    @app.command("up")
    def up_cmd(
        host: str = typer.Option("127.0.0.1", help="Address the hub listens on (0.0.0.0 "
                                 "lets nodes on other machines join)."),
        port: int = typer.Option(7443, help="Client port; 0 picks a free one."),
        node_port: int = typer.Option(7444, help="Node port; 0 picks a free one."),
        http_port: int = typer.Option(7445, help="HTTP port (health, metrics, MCP at /mcp); "
                                      "0 picks a free one, -1 turns it off."),
        home: Path | None = typer.Option(None, help="Data dir (default $CORTEX_HOME)."),
        fs_root: list[str] = typer.Option([], "--fs-root", help="A directory cortex cp / "
                                          "cortex fs may touch on the local node "
                                          "(repeatable; none = refused)."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
        log_format: str = _log_format_option(),
    ) -> None:
        """Start the embedded default: a hub (SQLite) and one local node, over mTLS."""
        _setup_logging(verbose, log_format)
        _run(_up(_home(home), host, port, node_port, http_port,
                 tuple(os.path.abspath(r) for r in fs_root)))


async def _up(home: Path, host: str, port: int, node_port: int, http_port: int,
              fs_roots: tuple[str, ...] = ()) -> None:
    from cortex.hub.config import HubConfig
    from cortex.hub.server import Hub
    from cortex.node.config import NodeConfig
    from cortex.node.identity import load_identity
    from cortex.node.main import build_agent, enroll_in_child

    started = time.monotonic()
    hub = Hub(HubConfig(data_dir=home / "hub", host=host, port=port, node_port=node_port,
                        http_port=http_port))
    await hub.start()
    local = f"127.0.0.1:{hub.port}" if host in ("0.0.0.0", "::") else hub.address  # noqa: S104
    node_cfg = NodeConfig(data_dir=home / "node", hub=local, name="local", fs_roots=fs_roots)
    ident = load_identity(node_cfg.data_dir)
    if ident is None:
        node_cfg = dataclasses.replace(node_cfg, token=await hub.join_token())
        ident = await enroll_in_child(node_cfg)
    node_address = f"{local.rpartition(':')[0]}:{hub.node_port}"
    if ident.node_address != node_address:
        # The hub's node port moved (e.g. port 0): follow it; the certificate still holds.
        ident = dataclasses.replace(ident, node_address=node_address)
    agent, journal = build_agent(node_cfg, ident)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        agent.request_stop()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run())
            await agent.connected.wait()
            http = (f"\n  HTTP (dashboard at /ui, /metrics, MCP at /mcp): "
                    f"http://{hub.http_address}" if hub.http_address else "")
            print(f"cortex is up in {time.monotonic() - started:.1f} s: hub {hub.address}, "
                  f"node {ident.node_id} connected.{http}\n"
                  f"  In another terminal: export PATH=\"{Path(sys.executable).parent}:$PATH\""
                  "; cortex run -- uname -a", flush=True)
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        journal.close()
        await hub.close()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(coro)
    except CortexError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None

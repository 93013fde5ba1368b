"""Putting the HTTP port together for one hub: app, metrics source, MCP endpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.routing import BaseRoute

from cortex.hub.http._app import build_app
from cortex.hub.http._exposition import render
from cortex.hub.http._metrics import HubSource, collect
from cortex.hub.http._server import DeferredMcp, HttpServer, McpEndpoint, McpLoader
from cortex.hub.http._store_metrics import ArtifactBytes

__all__ = ["McpSettings", "open_http"]

_MCP_MODULE = "cortex.mcp"


@dataclass(frozen=True, slots=True)
class McpSettings:
    """How MCP over HTTP reaches this hub: each caller's token makes its own gRPC client."""

    hub_address: Callable[[], str]  # the hub's client port as this process dials it (known
                                    # once the gRPC ports are bound)
    ca_pem: bytes               # the CA that signed the hub's serving certificate
    authenticate: Callable[[str], Awaitable[str]]  # token -> token id, or PermissionDenied


def open_http(*, host: str, port: int, ready: Callable[[], bool], source: HubSource,
              mcp: McpSettings | None, dashboard: list[BaseRoute] | None = None,
              artifact_bytes: ArtifactBytes | None = None) -> HttpServer:
    """The hub's HTTP server, bound (so its port is known) but not yet serving; `dashboard`
    is the web dashboard's routes, served under /ui; `artifact_bytes` (read from the store
    before a scrape, cached) is reported as cortex_artifact_bytes."""
    loader = None
    if mcp is not None:
        loader = McpLoader(DeferredMcp(), _MCP_MODULE, _mcp_factory(mcp, host))
        source = dataclasses.replace(source, mcp_clients=loader.route.clients)
    if artifact_bytes is not None:
        figures = artifact_bytes
        source = dataclasses.replace(source, artifact_bytes=lambda: figures.figures)
    app = build_app(ready=ready, metrics=lambda: render(collect(source)),
                    mcp=loader.route if loader else None, dashboard=dashboard,
                    before_scrape=artifact_bytes.refresh if artifact_bytes else None)
    return HttpServer(HttpServer.bind(host, port), app, mcp=loader)


def _mcp_factory(settings: McpSettings, host: str) -> Callable[[], McpEndpoint]:
    def make() -> McpEndpoint:
        # Heavy (about a second): HttpServer imports it in a thread before calling this.
        from cortex.mcp import HttpMcp

        return HttpMcp(hub_address=settings.hub_address(), ca_pem=settings.ca_pem,
                       authenticate=settings.authenticate, host=host)

    return make

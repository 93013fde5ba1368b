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
              mcp: McpSettings | None, dashboard: list[BaseRoute] | None = None
              ) -> HttpServer:
    """The hub's HTTP server, bound (so its port is known) but not yet serving; `dashboard`
    is the web dashboard's routes, served under /ui."""
    loader = None
    if mcp is not None:
        loader = McpLoader(DeferredMcp(), _MCP_MODULE, _mcp_factory(mcp, host))
        source = dataclasses.replace(source, mcp_clients=loader.route.clients)
    app = build_app(ready=ready, metrics=lambda: render(collect(source)),
                    mcp=loader.route if loader else None, dashboard=dashboard)
    return HttpServer(HttpServer.bind(host, port), app, mcp=loader)


def _mcp_factory(settings: McpSettings, host: str) -> Callable[[], McpEndpoint]:
    def make() -> McpEndpoint:
        # Heavy (about a second): HttpServer imports it in a thread before calling this.
        from cortex.mcp import HttpMcp

        return HttpMcp(hub_address=settings.hub_address(), ca_pem=settings.ca_pem,
                       authenticate=settings.authenticate, host=host)

    return make

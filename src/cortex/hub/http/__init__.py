"""The hub's HTTP port: `/healthz`, `/readyz`, Prometheus `/metrics`, and MCP at `/mcp`.

`open_http` builds it for a hub; `cortex.hub.server.Hub` starts it after the gRPC ports
and closes it after them. MCP over HTTP is `cortex.mcp.HttpMcp`, loaded lazily.
"""

from __future__ import annotations

from cortex.hub.http._exposition import CONTENT_TYPE, Family, render
from cortex.hub.http._metrics import HubSource, collect
from cortex.hub.http._server import MCP_LOAD_WAIT_S, HttpServer, McpEndpoint
from cortex.hub.http._wiring import McpSettings, open_http

__all__ = [
    "CONTENT_TYPE",
    "MCP_LOAD_WAIT_S",
    "Family",
    "HttpServer",
    "HubSource",
    "McpEndpoint",
    "McpSettings",
    "collect",
    "open_http",
    "render",
]

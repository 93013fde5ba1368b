"""The routes of the hub's HTTP port: health, readiness, metrics, and MCP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.hub.http._exposition import CONTENT_TYPE

__all__ = ["build_app"]


def build_app(*, ready: Callable[[], bool], metrics: Callable[[], str],
              mcp: ASGIApp | None, dashboard: list[BaseRoute] | None = None,
              before_scrape: Callable[[], Awaitable[None]] | None = None) -> Starlette:
    """`/healthz` (the process serves), `/readyz` (`ready()`), `/metrics` (`metrics()`, the
    exposition text), unless `mcp` is None MCP's streamable HTTP at `/mcp` (503
    while not ready: its calls go through the gRPC ports, which are then draining), and
    unless `dashboard` is None the dashboard's routes under `/ui` (`/` redirects there).
    `before_scrape` refreshes what `metrics()` reads from the store (cached)."""

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        if ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: starting or shutting down\n", status_code=503)

    async def scrape(_: Request) -> Response:
        if before_scrape is not None:
            await before_scrape()
        return Response(metrics(), media_type=CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", scrape, methods=["GET"]),
    ]
    if mcp is not None:
        routes.append(Route("/mcp", _WhenReady(mcp, ready), methods=["GET", "POST", "DELETE"]))
    routes += _dashboard_routes(dashboard)
    return Starlette(routes=routes)


def _dashboard_routes(dashboard: list[BaseRoute] | None) -> list[BaseRoute]:
    if dashboard is None:
        return []

    async def to_ui(_: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return [Route("/", to_ui, methods=["GET"]), Route("/ui", to_ui, methods=["GET"]),
            Mount("/ui", routes=dashboard)]


class _WhenReady:
    def __init__(self, app: ASGIApp, ready: Callable[[], bool]) -> None:
        self._app = app
        self._ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._ready():
            await self._app(scope, receive, send)
            return
        body = {"error": "unavailable",
                "error_description": "this hub is starting or shutting down: retry shortly"}
        await JSONResponse(body, status_code=503)(scope, receive, send)

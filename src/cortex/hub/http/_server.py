"""The hub's HTTP port: uvicorn serving one ASGI app on the hub's event loop.

The socket is bound by `HttpServer.bind` (so port 0 is resolved and a taken port fails
with a clear error before anything starts); `start` begins accepting, and one owned task
holds the MCP stack's lifetime until `close`. uvicorn's `Server.serve` is not used: it
installs its own SIGINT/SIGTERM handlers, which belong to the hub.

MCP takes about a second to import (and tens of MB), so it loads on the first `/mcp`
request, the import in a thread; requests wait for it up to `MCP_LOAD_WAIT_S`. A hub that
is never asked for MCP never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.errors import Unavailable

__all__ = ["MCP_LOAD_WAIT_S", "DeferredMcp", "HttpServer", "McpEndpoint", "McpLoader"]

log = logging.getLogger("cortex.hub.http")

MCP_LOAD_WAIT_S = 30.0
"""How long an /mcp request waits for the MCP stack to finish loading."""
_BACKLOG = 512
_MAX_CONCURRENCY = 1024  # connections + requests; past it uvicorn answers 503


class McpEndpoint(Protocol):
    """The MCP-over-HTTP app (`cortex.mcp.HttpMcp`): ASGI, plus the lifetime it needs."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    def running(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    def clients(self) -> int: ...


class DeferredMcp:
    """The /mcp route: asks for the endpoint, waits for it to load, hands requests to it."""

    def __init__(self) -> None:
        self._endpoint: McpEndpoint | None = None
        self._failed = ""
        self.wanted = asyncio.Event()      # set by the first request
        self._settled = asyncio.Event()

    def ready(self, endpoint: McpEndpoint) -> None:
        self._endpoint = endpoint
        self._settled.set()

    def clients(self) -> int:
        return 0 if self._endpoint is None else self._endpoint.clients()

    def failed(self, why: str) -> None:
        self._failed = why
        self._settled.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.wanted.set()
        why = ""
        try:
            async with asyncio.timeout(MCP_LOAD_WAIT_S):
                await self._settled.wait()
        except TimeoutError:
            why = "MCP is still starting on this hub: retry shortly"
        if self._endpoint is None:
            body = {"error": "unavailable", "error_description": why or self._failed}
            await JSONResponse(body, status_code=503)(scope, receive, send)
            return
        await self._endpoint(scope, receive, send)


@dataclass(frozen=True, slots=True)
class McpLoader:
    """How the /mcp route gets its endpoint: import `module` (slow, in a thread), then call
    `factory` on the loop; `route` is what the app routes /mcp to."""

    route: DeferredMcp
    module: str
    factory: Callable[[], McpEndpoint]


class HttpServer:
    """One listening socket, the app behind it, and the task that owns its lifetime."""

    def __init__(self, sock: socket.socket, app: ASGIApp, *, mcp: McpLoader | None) -> None:
        self._sock = sock
        self._config = uvicorn.Config(
            app, http="h11", ws="none", lifespan="off", log_config=None, access_log=False,
            proxy_headers=False, server_header=False, limit_concurrency=_MAX_CONCURRENCY,
            backlog=_BACKLOG)
        self._server = uvicorn.Server(self._config)
        self._mcp = mcp
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._grace = 0.0
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def bind(host: str, port: int) -> socket.socket:
        """A listening socket on `host`:`port` (0: a free port), or Unavailable saying what
        to do when it is taken."""
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(info[0], info[1], info[2])
        except OSError as exc:
            raise Unavailable(f"cannot listen for HTTP on {host}:{port} ({exc})") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise Unavailable(
                f"cannot listen for HTTP on {host}:{port} ({exc.strerror or exc}): is another "
                "hub running there? Stop it, or pick another port with --http-port (0 picks a "
                "free one, -1 turns HTTP off)") from exc
        return sock

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        """Accept connections; /healthz, /readyz and /metrics answer from now on."""
        self._config.load()
        self._server.lifespan = self._config.lifespan_class(self._config)
        try:
            await self._server.startup(sockets=[self._sock])
        except BaseException:
            self._sock.close()
            raise
        self._task = asyncio.create_task(self._run(), name="cortex-hub-http")

    async def close(self, grace: float) -> None:
        """Stop accepting, end MCP sessions, give requests in flight `grace` seconds.

        Called again (e.g. with grace 0 after a second signal), it cuts the wait short.
        The serving task is awaited without being cancelled by our own cancellation.
        """
        if self._task is None:
            self._sock.close()
            return
        if self._stop.is_set():
            self._hurry.set()
        self._grace = grace
        self._stop.set()
        await asyncio.wait([self._task])
        if not self._task.cancelled() and (exc := self._task.exception()) is not None:
            log.error("the HTTP server failed while stopping", exc_info=exc)

    async def _run(self) -> None:
        ticker = asyncio.create_task(self._server.main_loop(), name="cortex-hub-http-ticker")
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._mcp is not None and await self._mcp_wanted(self._mcp.route):
                    await self._start_mcp(self._mcp, stack)
                await self._stop.wait()
                for srv in self._server.servers:
                    srv.close()  # no new connections while MCP sessions end
        finally:
            ticker.cancel()
            await asyncio.wait([ticker])
            await self._drain()
            self._sock.close()

    async def _mcp_wanted(self, route: DeferredMcp) -> bool:
        """Wait for the first /mcp request (True) or the stop (False)."""
        waits = [asyncio.create_task(route.wanted.wait()),
                 asyncio.create_task(self._stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.wait(waits)
        if self._stop.is_set():
            route.failed("this hub is shutting down: retry shortly")
            return False
        return True

    @staticmethod
    async def _start_mcp(mcp: McpLoader, stack: contextlib.AsyncExitStack) -> None:
        """Load MCP (the import off the loop) and run its sessions inside `stack`; on
        failure /mcp answers 503 and the other routes go on serving."""
        try:
            await asyncio.to_thread(importlib.import_module, mcp.module)
            endpoint = mcp.factory()
            await stack.enter_async_context(endpoint.running())
        except Exception as exc:  # the other routes must outlive a broken MCP stack
            log.exception("MCP over HTTP failed to start; /mcp answers 503")
            mcp.route.failed(f"MCP failed to start on this hub ({exc}): see its log")
        else:
            mcp.route.ready(endpoint)

    async def _drain(self) -> None:
        """Let requests in flight finish within the grace (or until hurried), then cancel."""
        state = self._server.server_state
        for conn in list(state.connections):
            conn.shutdown()  # idle keep-alive connections close now, busy ones after
        tasks = set(state.tasks)
        if tasks:
            hurry = asyncio.create_task(self._hurry.wait())
            everything = asyncio.ensure_future(asyncio.wait(tasks))
            await asyncio.wait([everything, hurry], timeout=self._grace,
                               return_when=asyncio.FIRST_COMPLETED)
            for task in (hurry, everything, *tasks):
                task.cancel()
            await asyncio.wait([hurry, everything, *tasks])
        for srv in self._server.servers:
            srv.close()
        for conn in list(state.connections):
            conn.shutdown()

"""MCP over streamable HTTP, served by the hub at ``/mcp``: the same tools as over stdio,
each call made through an SDK client holding the caller's own API token.

A gate checks the bearer token with the hub first and answers 401 (JSON saying what to
do) when it is missing or refused. The tools then call the hub's gRPC port like any
client, with that token, so its tenant and role bound every call exactly as they bound
`cortex` or the SDK. One client per token is kept (at most `MAX_CLIENTS`, least recently
used ones closed first); an MCP session can be used only with the token that opened it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

from mcp.server.auth.middleware.auth_context import auth_context_var, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from cortex.errors import PermissionDenied, Unavailable
from cortex.mcp._binding import Binding
from cortex.mcp._errors import HTTP_CREDENTIALS, ToolError
from cortex.mcp._server import build_server
from cortex.mcp._stdin import StdinPipes
from cortex.mcp._tools import CortexTools
from cortex.sdk import Client, ClientConfig

__all__ = ["MAX_CLIENTS", "MAX_SESSIONS", "Authenticate", "HttpMcp"]

MAX_CLIENTS = 64
"""API tokens with an open hub client at once; past it idle ones are closed first."""
MAX_SESSIONS = 1000
"""Open MCP sessions at once; past it a new one is refused with 503."""

Authenticate = Callable[[str], Awaitable[str]]
"""Checks an API token with the hub: returns its id, or raises PermissionDenied saying why."""

_HOW = ("send a Cortex API token in the header 'Authorization: Bearer ctk_…' (configure it "
        "as a header of this MCP server in the MCP client); the hub's admin token is in "
        "<CORTEX_HOME>/hub/admin.token")


class HttpMcp:
    """The ASGI app for ``/mcp`` and its lifetime (`running`)."""

    def __init__(self, *, hub_address: str, ca_pem: bytes, authenticate: Authenticate,
                 host: str, path: str = "/mcp", max_clients: int = MAX_CLIENTS) -> None:
        self._authenticate = authenticate
        self._clients = _TokenClients(
            lambda token: ClientConfig(address=hub_address, token=token, ca_pem=ca_pem),
            limit=max_clients)
        with _hub_logging_kept():
            server = build_server(CortexTools(self._clients.current))
        # Builds the session manager; the app it returns is not used (the hub routes here).
        server.streamable_http_app(streamable_http_path=path, host=host,
                                   max_sessions=MAX_SESSIONS)
        self._sessions: StreamableHTTPSessionManager = server.session_manager

    def clients(self) -> int:
        """Tokens with an open hub client."""
        return len(self._clients)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve sessions inside; on exit end them and close every hub client."""
        try:
            async with self._sessions.run():
                yield
        finally:
            await self._clients.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            what = "no API token" if not scheme else "the Authorization header is not 'Bearer …'"
            await _refuse(scope, receive, send, f"{what}: {_HOW}", error=None)
            return
        try:
            token_id = await self._authenticate(token)
        except PermissionDenied as exc:
            await _refuse(scope, receive, send, f"{exc}. Over HTTP, {_HOW}")
            return
        except Unavailable as exc:
            body = {"error": "unavailable", "error_description": f"{exc}; retry shortly"}
            await JSONResponse(body, status_code=503)(scope, receive, send)
            return
        user = AuthenticatedUser(AccessToken(token=token, client_id=token_id, scopes=[]))
        scope = {**scope, "user": user, "auth": AuthCredentials([])}
        async with self._clients.admit(token):
            # The tools find the caller's client through this (see `_TokenClients.current`);
            # the MCP stack hands it on to the task that runs the call.
            reset = auth_context_var.set(user)
            try:
                await self._sessions.handle_request(scope, receive, send)
            finally:
                auth_context_var.reset(reset)


@contextlib.contextmanager
def _hub_logging_kept() -> Iterator[None]:
    """MCPServer() calls logging.basicConfig, which in a hub whose embedder configured no
    logging would install a handler on the root logger; a placeholder makes it a no-op."""
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


async def _refuse(scope: Scope, receive: Receive, send: Send, why: str, *,
                  error: str | None = "invalid_token") -> None:
    """401 with RFC 6750's challenge, and JSON saying what was wrong and what to do."""
    challenge = 'Bearer realm="cortex"' + (f', error="{error}"' if error else "")
    body = {"error": error or "unauthorized", "error_description": why}
    response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})
    await response(scope, receive, send)


@dataclass(eq=False)
class _Held:
    binding: Binding
    users: int = 0          # HTTP requests of this token in flight


class _TokenClients:
    """One hub client (and its interactive stdin streams) per API token, bounded."""

    def __init__(self, config: Callable[[str], ClientConfig], *, limit: int) -> None:
        self._config = config
        self._limit = limit
        self._held: OrderedDict[str, _Held] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.asynccontextmanager
    async def admit(self, token: str) -> AsyncIterator[None]:
        """Hold the token's client for one request (never closed while held)."""
        held = self._get(token)
        held.users += 1
        try:
            await self._evict()
            yield
        finally:
            held.users -= 1

    def current(self) -> Binding:
        """The binding of the token of the request being served."""
        access = get_access_token()
        if access is None:  # the gate always sets it; a tool run elsewhere is a bug
            raise ToolError("this MCP call carries no API token; " + _HOW)
        return self._get(access.token).binding

    async def aclose(self) -> None:
        while self._held:
            _, held = self._held.popitem()
            await _close(held.binding)

    def _get(self, token: str) -> _Held:
        held = self._held.get(token)
        if held is None:
            client = Client(self._config(token))
            held = self._held[token] = _Held(
                Binding(client, StdinPipes(client), HTTP_CREDENTIALS))
        self._held.move_to_end(token)
        return held

    async def _evict(self) -> None:
        """Close the least recently used idle clients past the limit (busy ones stay, so
        the bound can be exceeded by the tokens with a request in flight)."""
        while len(self._held) > self._limit:
            idle = next((t for t, h in self._held.items() if h.users == 0), None)
            if idle is None:
                return
            await _close(self._held.pop(idle).binding)


async def _close(binding: Binding) -> None:
    await binding.pipes.aclose()
    await binding.client.close()

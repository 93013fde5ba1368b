"""The dashboard's routes under /ui: login/logout, nodes, tasks, one task (with its live
log over Server-Sent Events), cancel and retry, sessions (newest screenshot, live view of
a recording), and the tenants page for admins (with the hub-admin's limits form).

Every page is read for the logged-in token's tenant; every POST needs the session's CSRF
token (hidden field `csrf` or header `X-CSRF-Token`) and a same-origin `Origin` if the
browser sends one. Writes need a role that may write (viewer is read-only).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import (
    Conflict,
    CortexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from cortex.hub.access import ACCESS
from cortex.hub.artifacts import ArtifactManager
from cortex.hub.auth import Authenticator, Principal
from cortex.hub.registry import Registry
from cortex.hub.tasks import TaskManager
from cortex.hub.web import _browser_sessions, _data, _tenants
from cortex.hub.web._sessions import Session, Sessions, same_secret
from cortex.hub.web._sse import OpenStreams, task_events
from cortex.store.base import Store

__all__ = ["PREFIX", "SESSION_COOKIE", "Dashboard"]

log = logging.getLogger("cortex.hub.web")

PREFIX = "/ui"
SESSION_COOKIE = "cortex_session"
LOGIN_COOKIE = "cortex_login"          # double-submit CSRF secret of the login form
# The roles that may cancel and retry, as for the gRPC Cancel (one table: hub/access.py).
WRITE_ROLES = ACCESS["/cortex.v1.TaskService/Cancel"]
ADMIN_ROLES = frozenset({"admin", "hub-admin"})
_STATUS = {InvalidArgument: 400, PermissionDenied: 403, NotFound: 404, Conflict: 409}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# What the browser may cache, it caches for this login only: another login in the same
# browser (a new session cookie) fetches again, and is checked again.
_CACHED_PER_LOGIN = {"Vary": "Cookie"}
_MAX_FORM = 64 * 1024
_INLINE = frozenset({"image/png", "image/jpeg"})
MAX_STREAMS = 512
"""Live log streams open at once on one hub; past it a stream is refused with 503."""
MAX_STREAMS_PER_TOKEN = 64
"""Live log streams of one API token's logins at once: one token cannot take them all."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The logged-in user of one request."""

    session: Session
    principal: Principal

    @property
    def can_write(self) -> bool:
        return self.principal.role in WRITE_ROLES

    @property
    def is_admin(self) -> bool:
        return self.principal.role in ADMIN_ROLES


Handler = Callable[[Request, Viewer], Awaitable[Response]]


class Dashboard:
    """The dashboard of one hub: its sessions, its templates, its routes."""

    def __init__(self, *, tasks: TaskManager, registry: Registry, store: Store,
                 auth: Authenticator | None = None,
                 artifacts: Callable[[], ArtifactManager | None] = lambda: None,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self._tasks = tasks
        self._registry = registry
        self._store = store
        self._auth = auth or Authenticator(store)
        self._artifacts = artifacts
        self._clock = clock
        self._mono = mono
        self.sessions = Sessions()
        self.closing = asyncio.Event()   # set when the hub stops: live streams end
        self.streams = OpenStreams()     # live log streams being sent
        env = jinja2.Environment(loader=jinja2.PackageLoader("cortex.hub.web", "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters.update(when=_data.when, state=_data.state_label, command=_data.command_of,
                           node_state=_data.node_state)
        env.globals.update(duration=_data.duration, age=_data.age, base=PREFIX)
        self._templates = Jinja2Templates(env=env)

    def close(self) -> None:
        """End live log streams (the hub is stopping)."""
        self.closing.set()

    def routes(self) -> list[BaseRoute]:
        page = self._page
        return [
            Route("/", self._home, methods=["GET"]),
            Route("/login", self._login_form, methods=["GET"]),
            Route("/login", self._login, methods=["POST"]),
            Route("/logout", self._post(self._logout), methods=["POST"]),
            Route("/nodes", page(self._nodes), methods=["GET"]),
            Route("/tasks", page(self._task_list), methods=["GET"]),
            Route("/tasks/{task_id}", page(self._task), methods=["GET"]),
            Route("/tasks/{task_id}/events", self._events, methods=["GET"]),
            Route("/tasks/{task_id}/files/{artifact_id}", page(self._download),
                  methods=["GET"]),
            Route("/tasks/{task_id}/cancel", self._post(self._cancel), methods=["POST"]),
            Route("/tasks/{task_id}/retry", self._post(self._retry), methods=["POST"]),
            Route("/sessions", page(self._sessions), methods=["GET"]),
            Route("/sessions/{session_id:path}/live", page(self._live), methods=["GET"]),
            Route("/tenant", page(self._tenant), methods=["GET"]),
            Route("/tenant/limits", self._post(self._set_limits), methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("cortex.hub.web", "static")]),
                  name="static"),
        ]

    # -- who is asking -----------------------------------------------------------------
    async def _viewer(self, request: Request) -> Viewer | None:
        return await self._viewer_of(request.cookies.get(SESSION_COOKIE, ""))

    async def _viewer_of(self, session_id: str) -> Viewer | None:
        """The session's user, the session marked as used; None once it or its token has
        ended (an open live log asks again while it streams)."""
        session = self.sessions.touch(session_id, now=self._clock())
        if session is None:
            return None
        try:
            principal = await self._auth.authenticate(
                (("authorization", f"Bearer {session.token}"),), now=self._clock(),
                mono=self._mono())
        except PermissionDenied:
            self.sessions.end_for_token(session.token)  # revoked or expired meanwhile
            return None
        return Viewer(session, principal)

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A GET page: the login form first when there is no session."""
        async def endpoint(request: Request) -> Response:
            viewer = await self._viewer(request)
            if viewer is None:
                return _to_login(request)
            try:
                return await handler(request, viewer)
            except CortexError as exc:
                return self._error(request, viewer, exc)
        return endpoint

    def _post(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A POST: a session (401), a same-origin request and its CSRF token (403)."""
        async def endpoint(request: Request) -> Response:
            viewer = await self._viewer(request)
            if viewer is None:
                return _plain(401, "not logged in (or the session expired): log in again "
                                   f"at {PREFIX}/login")
            if not _same_origin(request):
                return _plain(403, "cross-origin POST refused: use the dashboard's own forms")
            try:
                form = await _form(request)
            except InvalidArgument as exc:
                return _plain(400, str(exc))
            given = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
            if not same_secret(given, viewer.session.csrf):
                return _plain(403, "missing or wrong CSRF token: reload the page and try "
                                   "again")
            try:
                return await handler(request, viewer)
            except CortexError as exc:
                return self._error(request, viewer, exc)
        return endpoint

    def _render(self, request: Request, name: str, viewer: Viewer | None, *,
                status: int = 200, **context: Any) -> Response:
        context.update(viewer=viewer, csrf=viewer.session.csrf if viewer else "")
        response = self._templates.TemplateResponse(request, name, context,
                                                    status_code=status)
        response.headers.update(_HEADERS)
        return response

    def _error(self, request: Request, viewer: Viewer, exc: CortexError) -> Response:
        status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
        return self._render(request, "error.html", viewer, status=status, message=str(exc))

    # -- login -------------------------------------------------------------------------
    async def _home(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/tasks", status_code=303)

    async def _login_form(self, request: Request, *, status: int = 200,
                          message: str = "", next_page: str | None = None) -> Response:
        secret = secrets.token_urlsafe(32)
        target = _safe_next(request) if next_page is None else next_page
        response = self._render(request, "login.html", None, status=status, message=message,
                                login_csrf=secret, next=target if _is_local(target) else "")
        _set_cookie(response, request, LOGIN_COOKIE, secret, path=f"{PREFIX}/login",
                    max_age=3600)
        return response

    async def _login(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except InvalidArgument as exc:
            return _plain(400, str(exc))
        target = str(form.get("next") or "")
        if not same_secret(str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")):
            return await self._login_form(request, status=403, next_page=target, message=(
                "the login form expired or came from another site: try again"))
        if not _same_origin(request):
            return _plain(403, "cross-origin POST refused: use the dashboard's own forms")
        token = str(form.get("token", "")).strip()
        try:
            who = await self._auth.authenticate((("authorization", f"Bearer {token}"),),
                                                now=self._clock(), mono=self._mono())
        except PermissionDenied as exc:
            return await self._login_form(request, status=401, message=str(exc),
                                          next_page=target)
        session = self.sessions.create(token, now=self._clock())
        log.info("dashboard login: token %s of tenant %s (%s)", who.token_id, who.tenant,
                 who.role, extra={"tenant": who.tenant})
        response = RedirectResponse(target if _is_local(target) else f"{PREFIX}/tasks",
                                    status_code=303)
        _set_cookie(response, request, SESSION_COOKIE, session.id, path=PREFIX,
                    max_age=int(self.sessions.lifetime_s))
        response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
        return response

    async def _logout(self, request: Request, viewer: Viewer) -> Response:
        self.sessions.end(viewer.session.id)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # -- pages -------------------------------------------------------------------------
    async def _nodes(self, request: Request, viewer: Viewer) -> Response:
        nodes = await _data.list_nodes(self._store, self._registry, viewer.principal.tenant)
        name = "_nodes_table.html" if request.query_params.get("fragment") else "nodes.html"
        return self._render(request, name, viewer, nodes=nodes, now=self._clock())

    async def _task_list(self, request: Request, viewer: Viewer) -> Response:
        flt = _data.TaskFilter.parse(dict(request.query_params))
        tasks, next_token = await _data.search_tasks(self._tasks, viewer.principal.tenant,
                                                     flt)
        name = "_tasks_table.html" if request.query_params.get("fragment") else "tasks.html"
        query = {k: v for k, v in request.query_params.items() if k not in ("fragment",)}
        return self._render(request, name, viewer, tasks=tasks, flt=flt, now=self._clock(),
                            next_token=next_token, query=query,
                            states=_data.STATE_NAMES)

    async def _task(self, request: Request, viewer: Viewer) -> Response:
        task = await self._tasks.get(viewer.principal.tenant,
                                     _task_id(request.path_params["task_id"]),
                                     with_attempts=True)
        files = await self._store.list_artifacts(viewer.principal.tenant, task_id=task.id,
                                                 limit=1000)
        name = "_task_details.html" if request.query_params.get("fragment") else "task.html"
        return self._render(request, name, viewer, task=task, files=files,
                            spec=_data.spec_json(task), finished=task.finished_at > 0,
                            active=task.state in (pb.QUEUED, pb.ASSIGNED, pb.RUNNING))

    async def _download(self, request: Request, viewer: Viewer) -> Response:
        """One of a task's artifacts, streamed from the blob store (verified as it goes)."""
        manager = self._artifacts()
        if manager is None:
            return _plain(503, "the artifact store is not open yet: retry shortly")
        tenant = viewer.principal.tenant
        task_id = _task_id(request.path_params["task_id"])
        artifact_id = request.path_params["artifact_id"]
        if not artifact_id or len(artifact_id) > 128 or not artifact_id.isascii():
            raise NotFound(f"no artifact {artifact_id[:40]!r}")
        file = await manager.stat(tenant, artifact_id)
        if file.task_id != task_id:
            raise NotFound(f"task {task_id} has no artifact {file.artifact_id}")

        async def body() -> AsyncIterator[bytes]:
            async for chunk in manager.read(tenant, file.artifact_id, offset=0, limit=0):
                yield chunk.data

        # Inline only for images (the sessions page shows screenshots); anything else, an
        # HTML file above all, is a download: it must never run as one of our pages.
        inline = bool(request.query_params.get("inline")) and file.media_type in _INLINE
        headers = {"Content-Disposition": _disposition("inline" if inline else "attachment",
                                                       file.name.rsplit("/", 1)[-1]),
                   "Content-Length": str(file.size), "X-Content-Type-Options": "nosniff"}
        if inline:   # an artifact never changes: the 2 s refresh need not fetch it again
            headers.update(_CACHED_PER_LOGIN)
            headers["Cache-Control"] = "private, max-age=3600"
        return StreamingResponse(body(), media_type=file.media_type or
                                 "application/octet-stream", headers=headers)

    async def _sessions(self, request: Request, viewer: Viewer) -> Response:
        rows = await _browser_sessions.session_rows(
            self._store, self._tasks, self._registry, self._artifacts(),
            viewer.principal.tenant)
        name = "_sessions_table.html" if request.query_params.get("fragment") \
            else "sessions.html"
        return self._render(request, name, viewer, sessions=rows, now=self._clock())

    async def _live(self, request: Request, viewer: Viewer) -> Response:
        """The newest frame of a recording session, as a JPEG (the live view's image)."""
        session_id = request.path_params["session_id"]
        if not session_id or len(session_id) > 256:
            raise NotFound(f"no session {session_id[:40]!r}")
        frame = await _browser_sessions.live_frame(
            self._store, self._tasks, self._artifacts(), viewer.principal.tenant, session_id)
        headers = dict(_HEADERS)
        if request.query_params.get("at"):
            # The table's URL names a fragment (`at`: where it ends); the frame answered is
            # that one or newer. Kept briefly, a refresh of the table that finds no newer
            # fragment shows the image it has instead of loading (and decoding) it again.
            headers.update(_CACHED_PER_LOGIN)
            headers["Cache-Control"] = "private, max-age=30"
        return Response(frame, media_type="image/jpeg", headers=headers)

    async def _tenant(self, request: Request, viewer: Viewer) -> Response:
        if not viewer.is_admin:
            raise PermissionDenied(
                f"role {viewer.principal.role!r} may not see the tenant page: log in with an "
                "admin token")
        counts = await _data.tenant_counts(self._tasks, self._store, self._registry,
                                           viewer.principal.tenant)
        rows = await _tenants.tenant_rows(self._store, self._tasks, self._registry,
                                          viewer.principal)
        return self._render(request, "tenant.html", viewer, counts=counts, tenants=rows,
                            sessions=len(self.sessions), now=self._clock(),
                            may_edit=viewer.principal.role in _tenants.LIMIT_ROLES)

    async def _set_limits(self, request: Request, viewer: Viewer) -> Response:
        tenant = await _tenants.set_limits(self._store, self._tasks, viewer.principal,
                                           await _form(request))
        return RedirectResponse(f"{PREFIX}/tenant#tenant-{quote(tenant)}", status_code=303)

    # -- live log ----------------------------------------------------------------------
    async def _events(self, request: Request) -> Response:
        viewer = await self._viewer(request)
        if viewer is None:
            return _plain(401, f"not logged in: log in at {PREFIX}/login")
        task_id = request.path_params["task_id"]
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not raw.isdigit() or len(raw) > 19:
            return _plain(400, f"Last-Event-ID / after must be an event sequence number, "
                               f"not {raw[:40]!r}")
        try:
            await self._tasks.get(viewer.principal.tenant, _task_id(task_id))
        except NotFound as exc:
            return _plain(404, str(exc))
        who = viewer.principal.token_id
        if self.streams.of(who) >= MAX_STREAMS_PER_TOKEN:
            return _plain(503, f"this login already follows {MAX_STREAMS_PER_TOKEN} live "
                               "logs: close some task pages, or retry shortly", retry_after=5)
        if self.streams.now >= MAX_STREAMS:
            return _plain(503, f"this hub already serves {MAX_STREAMS} live logs: close some "
                               "task pages, or retry shortly", retry_after=5)
        session_id = viewer.session.id

        async def allowed() -> bool:   # still logged in, with a token still valid
            return await self._viewer_of(session_id) is not None

        return task_events(self._tasks, viewer.principal.tenant, task_id,
                           after_seq=int(raw), closing=self.closing, streams=self.streams,
                           who=who, allowed=allowed)

    # -- actions -----------------------------------------------------------------------
    async def _cancel(self, request: Request, viewer: Viewer) -> Response:
        _may_write(viewer)
        task_id = _task_id(request.path_params["task_id"])
        reason = f"cancelled from the dashboard (token {viewer.principal.token_id})"
        await self._tasks.cancel(viewer.principal.tenant, task_id, reason)
        log.info("dashboard: token %s cancelled %s", viewer.principal.token_id, task_id,
                 extra={"task_id": task_id, "tenant": viewer.principal.tenant})
        return RedirectResponse(f"{PREFIX}/tasks/{task_id}", status_code=303)

    async def _retry(self, request: Request, viewer: Viewer) -> Response:
        _may_write(viewer)
        old = await self._tasks.get(viewer.principal.tenant,
                                    _task_id(request.path_params["task_id"]))
        spec = pb.TaskSpec()
        spec.CopyFrom(old.spec)
        spec.idempotency_key = ""   # the same key would hand back the old task
        spec.traceparent = ""       # a new task: not a part of the old one's trace
        task, _ = await self._tasks.submit(viewer.principal.tenant, spec)
        log.info("dashboard: token %s retried %s as %s", viewer.principal.token_id, old.id,
                 task.id, extra={"task_id": task.id, "tenant": viewer.principal.tenant})
        return RedirectResponse(f"{PREFIX}/tasks/{task.id}", status_code=303)


def _task_id(value: str) -> str:
    if not value or len(value) > 128 or not value.isascii():
        raise NotFound(f"no task {value[:40]!r}: task ids look like t-0123456789abcdefghij")
    return value


def _may_write(viewer: Viewer) -> None:
    if not viewer.can_write:
        raise PermissionDenied(f"role {viewer.principal.role!r} is read-only: log in with an "
                               "operator, agent or admin token to cancel or retry")


def _disposition(kind: str, name: str) -> str:
    """A Content-Disposition for a file called `name` (RFC 6266): an ASCII `filename` for
    old clients and the exact name, percent-encoded UTF-8, in `filename*`. Any character
    may be in an artifact's name; none may break the header."""
    plain = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return (f'{kind}; filename="{plain or "download"}"; '
            f"filename*=UTF-8''{quote(name, safe='')}")


async def _form(request: Request) -> dict[str, Any]:
    # A body without Content-Length (chunked) would be read whole before any limit
    # applied: the dashboard's forms always send one.
    length = request.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > _MAX_FORM:
        raise InvalidArgument(f"form too large or of unknown size (at most {_MAX_FORM} "
                              "bytes, with a Content-Length): the dashboard's forms are "
                              "small; this request did not come from them")
    form = await request.form(max_files=0, max_fields=32)
    return dict(form)


def _same_origin(request: Request) -> bool:
    """False when the browser says the request came from another origin."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _is_local(target: str) -> bool:
    return target.startswith(f"{PREFIX}/") and not target.startswith("//") \
        and "\\" not in target and "://" not in target


def _safe_next(request: Request) -> str:
    target = request.query_params.get("next", "")
    return target if _is_local(target) else ""


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)


def _plain(status: int, text: str, *, retry_after: int = 0) -> Response:
    headers = dict(_HEADERS)
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    return HTMLResponse(text + "\n", status_code=status, media_type="text/plain",
                        headers=headers)


def _set_cookie(response: Response, request: Request, name: str, value: str, *, path: str,
                max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")

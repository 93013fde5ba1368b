"""The web dashboard over plain HTTP (no browser): login and sessions, CSRF, roles, tenant
scoping, filters and paging, and the live log's SSE stream with Last-Event-ID resume.

A real hub and node run in-process on loopback (the `hub` fixture runs each test on SQLite
and on Postgres); HTTP is spoken by httpx2 with its cookie jar, like a browser would.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx2
import pytest
import pytest_asyncio

from cortex.hub.auth import issue_api_token
from cortex.hub.server import Hub
from cortex.hub.web import PREFIX, SESSION_COOKIE
from cortex.node.agent import Agent
from cortex.sdk import Client, build_spec

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
FOREVER = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def only_node(hub: Hub) -> str:
    (conn,) = hub.registry.all()
    return conn.node_id


def base(hub: Hub) -> str:
    assert hub.http_port
    return f"http://127.0.0.1:{hub.http_port}"


async def token_of(hub: Hub, *, tenant: str = "default", role: str = "admin") -> str:
    """A fresh API token of `tenant` (created if new) with `role`."""
    await hub.store.ensure_tenant(tenant, now=time.time())
    return await issue_api_token(hub.store, tenant=tenant, role=role, name=f"{role} test",
                                 now=time.time())


@dataclass
class Browser:
    """An HTTP client with a cookie jar and the session's CSRF token once logged in."""

    http: httpx2.AsyncClient
    csrf: str = ""

    async def login(self, token: str) -> httpx2.Response:
        form = await self.http.get(f"{PREFIX}/login")
        assert form.status_code == 200
        (secret,) = _CSRF.findall(form.text)
        res = await self.http.post(f"{PREFIX}/login", data={"token": token, "csrf": secret})
        if res.status_code == 303:
            page = await self.http.get(f"{PREFIX}/tasks")
            assert page.status_code == 200, page.text
            self.csrf = _CSRF.findall(page.text)[0]
        return res

    async def post(self, path: str, *, csrf: str | None = None,
                   headers: dict[str, str] | None = None) -> httpx2.Response:
        data = {} if csrf is None else {"csrf": csrf}
        return await self.http.post(path, data=data, headers=headers or {})


@pytest_asyncio.fixture
async def web(hub: Hub) -> AsyncIterator[Browser]:
    """A cookie-keeping HTTP client of the hub's dashboard, not logged in yet."""
    async with httpx2.AsyncClient(base_url=base(hub), timeout=30.0) as http:
        yield Browser(http)


def sse_messages(text: str) -> list[dict[str, str]]:
    """The messages of an SSE body (comments and the retry line left out)."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = fields.get(name, "") + value if name != "data" else \
                (fields["data"] + "\n" + value if "data" in fields else value)
        if "event" in fields:
            out.append(fields)
    return out


# -- login and sessions -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_pages_send_an_anonymous_visitor_to_the_login_form(hub: Hub, web: Browser
                                                                 ) -> None:
    """Without a session every page redirects to the login form, keeping where it was."""
    res = await web.http.get(f"{PREFIX}/tasks?state=running")
    assert res.status_code == 303
    assert res.headers["location"] == f"{PREFIX}/login?next=%2Fui%2Ftasks%3Fstate%3Drunning"
    root = await web.http.get("/")
    assert root.status_code == 307
    assert root.headers["location"] == "/ui/"
    events = await web.http.get(f"{PREFIX}/tasks/t-x/events")
    assert events.status_code == 401


@pytest.mark.asyncio
async def test_a_wrong_token_is_refused_saying_why(hub: Hub, web: Browser) -> None:
    """An unknown or malformed token gets the form back with a 401 and the reason."""
    res = await web.login("ctk_nosuch.secret")
    assert res.status_code == 401
    assert "unknown API token" in res.text
    res = await web.login("not-a-token")
    assert res.status_code == 401
    assert "malformed API token" in res.text
    assert SESSION_COOKIE not in web.http.cookies


@pytest.mark.asyncio
async def test_login_without_the_forms_csrf_secret_is_refused(hub: Hub, web: Browser) -> None:
    """A login POST that did not come from our form (no login CSRF) makes no session."""
    res = await web.http.post(f"{PREFIX}/login", data={"token": hub.admin_token})
    assert res.status_code == 403
    assert SESSION_COOKIE not in web.http.cookies


@pytest.mark.asyncio
async def test_login_sets_a_strict_httponly_session_cookie_and_logout_ends_it(
        hub: Hub, web: Browser) -> None:
    """The session cookie is HttpOnly and SameSite=Strict; after logout it opens nothing."""
    res = await web.login(hub.admin_token)
    assert res.status_code == 303
    assert res.headers["location"] == f"{PREFIX}/tasks"
    cookie = res.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/ui" in cookie
    old = web.http.cookies[SESSION_COOKIE]
    assert len(hub.dashboard.sessions) == 1
    out = await web.post(f"{PREFIX}/logout", csrf=web.csrf)
    assert out.status_code == 303
    assert len(hub.dashboard.sessions) == 0
    web.http.cookies.set(SESSION_COOKIE, old, domain="127.0.0.1", path="/ui")
    again = await web.http.get(f"{PREFIX}/nodes")
    assert again.status_code == 303
    assert again.headers["location"].startswith(f"{PREFIX}/login")


@pytest.mark.asyncio
async def test_login_returns_to_the_page_asked_for_but_never_off_site(hub: Hub, web: Browser
                                                                      ) -> None:
    """`next` brings the user back to a dashboard page; any other target is ignored."""
    form = await web.http.get(f"{PREFIX}/login?next=//evil.example/x")
    (secret,) = _CSRF.findall(form.text)
    res = await web.http.post(f"{PREFIX}/login", data={
        "token": hub.admin_token, "csrf": secret, "next": "//evil.example/x"})
    assert res.headers["location"] == f"{PREFIX}/tasks"
    form = await web.http.get(f"{PREFIX}/login")
    (secret,) = _CSRF.findall(form.text)
    res = await web.http.post(f"{PREFIX}/login", data={
        "token": hub.admin_token, "csrf": secret, "next": f"{PREFIX}/nodes"})
    assert res.headers["location"] == f"{PREFIX}/nodes"


@pytest.mark.asyncio
async def test_an_expired_token_ends_its_sessions(hub: Hub, web: Browser) -> None:
    """The token is checked on every request: once it has expired the session is gone,
    even though the session itself would still be valid."""
    now = time.time()
    token = await issue_api_token(hub.store, tenant="default", role="viewer", name="short",
                                  now=now, ttl_s=3600)
    assert (await web.login(token)).status_code == 303
    dash = hub.dashboard
    dash.sessions.idle_s = dash.sessions.lifetime_s = 10 * 86400.0
    dash._clock = lambda: time.time() + 7200        # two hours on: the token has expired
    dash._mono = lambda: time.monotonic() + 7200    # and its cached check is stale
    res = await web.http.get(f"{PREFIX}/tasks")
    assert res.status_code == 303
    assert len(dash.sessions) == 0


@pytest.mark.asyncio
async def test_an_idle_session_expires(hub: Hub, web: Browser) -> None:
    """A session unused for longer than the idle bound sends the user to log in again."""
    assert (await web.login(hub.admin_token)).status_code == 303
    dash = hub.dashboard
    dash._clock = lambda: time.time() + dash.sessions.idle_s + 1
    res = await web.http.get(f"{PREFIX}/tasks")
    assert res.status_code == 303
    assert res.headers["location"].startswith(f"{PREFIX}/login")


# -- CSRF and roles ---------------------------------------------------------------------

@pytest.mark.asyncio
async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
        hub: Hub, node: Agent, web: Browser, client: Client) -> None:
    """Cancel without the CSRF token, or with a wrong one, or cross-origin: 403, task runs
    on; with the token (form field or htmx header) it is cancelled."""
    task = await client.submit(argv=[PY, "-c", FOREVER])
    await web.login(hub.admin_token)
    path = f"{PREFIX}/tasks/{task.id}/cancel"
    for res in (await web.post(path), await web.post(path, csrf="wrong"),
                await web.post(path, csrf=web.csrf,
                               headers={"Origin": "http://evil.example"})):
        assert res.status_code == 403, res.text
    assert not (await client.get(task.id)).cancel_requested
    ok = await web.post(path, headers={"X-CSRF-Token": web.csrf})
    assert ok.status_code == 303
    assert ok.headers["location"] == f"{PREFIX}/tasks/{task.id}"
    async for _ in client.watch(task.id):
        pass
    assert (await client.get(task.id)).state == 6   # cancelled


@pytest.mark.asyncio
async def test_a_viewer_may_look_but_not_cancel_or_retry(hub: Hub, web: Browser,
                                                        client: Client) -> None:
    """A viewer token sees the task without buttons, and its POSTs are refused (403)."""
    task = await client.submit(argv=["true"])
    await web.login(await token_of(hub, role="viewer"))
    page = await web.http.get(f"{PREFIX}/tasks/{task.id}")
    assert page.status_code == 200
    assert task.id in page.text
    assert 'id="cancel"' not in page.text
    assert 'id="retry"' not in page.text
    for action in ("cancel", "retry"):
        res = await web.post(f"{PREFIX}/tasks/{task.id}/{action}", csrf=web.csrf)
        assert res.status_code == 403
        assert "read-only" in res.text
    tenant = await web.http.get(f"{PREFIX}/tenant")
    assert tenant.status_code == 403
    assert (await client.get(task.id)).state == 1   # still queued: no node


@pytest.mark.asyncio
async def test_retry_submits_the_same_spec_as_a_new_task(hub: Hub, web: Browser,
                                                        client: Client) -> None:
    """Retry makes a new task with the old spec (its idempotency key dropped)."""
    task = await client.submit(argv=["echo", "again"], labels={"os": "linux"},
                               idempotency_key="k1")
    await web.login(hub.admin_token)
    res = await web.post(f"{PREFIX}/tasks/{task.id}/retry", csrf=web.csrf)
    assert res.status_code == 303
    new_id = res.headers["location"].rsplit("/", 1)[1]
    assert new_id != task.id
    new = await client.get(new_id)
    assert list(new.spec.shell.argv) == ["echo", "again"]
    assert dict(new.spec.labels) == {"os": "linux"}
    assert new.spec.idempotency_key == ""


# -- tenant scoping ---------------------------------------------------------------------

@pytest.mark.asyncio
async def test_another_tenant_sees_none_of_this_tenants_tasks_or_nodes(
        hub: Hub, node: Agent, web: Browser, client: Client) -> None:
    """Task page, log stream, actions, task list and node list are all per tenant."""
    task = await client.submit(argv=["echo", "secret-output"])
    async for _ in client.watch(task.id):
        pass
    await web.login(await token_of(hub, tenant="other", role="admin"))
    assert (await web.http.get(f"{PREFIX}/tasks/{task.id}")).status_code == 404
    assert (await web.http.get(f"{PREFIX}/tasks/{task.id}/events")).status_code == 404
    assert (await web.post(f"{PREFIX}/tasks/{task.id}/retry", csrf=web.csrf)).status_code \
        == 404
    listing = await web.http.get(f"{PREFIX}/tasks")
    assert task.id not in listing.text
    nodes = await web.http.get(f"{PREFIX}/nodes")
    assert only_node(hub) not in nodes.text
    assert "No node has enrolled" in nodes.text
    tenant = await web.http.get(f"{PREFIX}/tenant")
    assert 'id="tenant-name">other<' in tenant.text


@pytest.mark.asyncio
async def test_the_owner_sees_its_node_and_task(hub: Hub, node: Agent, web: Browser,
                                               client: Client) -> None:
    """The node list shows the node with its state, slots, skills and certificate expiry."""
    task = await client.submit(argv=["echo", "hello"])
    await web.login(hub.admin_token)
    nodes = (await web.http.get(f"{PREFIX}/nodes")).text
    assert only_node(hub) in nodes
    assert "online" in nodes
    assert "shell" in nodes
    assert "certificate expires" in nodes
    assert "unknown</td>" not in nodes
    fragment = await web.http.get(f"{PREFIX}/nodes?fragment=1")
    assert fragment.text.lstrip().startswith('<div id="nodes"')
    listing = (await web.http.get(f"{PREFIX}/tasks")).text
    assert task.id in listing
    assert "echo hello" in listing


# -- filters and paging -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_the_task_list_filters_by_state_skill_and_text_and_pages(
        hub: Hub, web: Browser, client: Client) -> None:
    """Filters narrow the list; 60 matches make a first page of 50 and a second of 10."""
    await client.submit_many([build_spec(argv=["echo", f"job-{i}"]) for i in range(60)])
    odd = await client.submit(skill="noop")
    await web.login(hub.admin_token)
    first = (await web.http.get(f"{PREFIX}/tasks?state=queued&text=job-")).text
    assert first.count('data-task="') == 50
    assert odd.id not in first
    (next_href,) = re.findall(r'id="next-page" href="([^"]+)"', first)
    second = (await web.http.get(next_href.replace("&amp;", "&"))).text
    assert second.count('data-task="') == 10
    assert 'id="next-page"' not in second
    noop = (await web.http.get(f"{PREFIX}/tasks?skill=noop")).text
    assert noop.count('data-task="') == 1
    assert odd.id in noop
    one = (await web.http.get(f"{PREFIX}/tasks?text=job-7%27")).text
    assert one.count('data-task="') == 0
    assert (await web.http.get(f"{PREFIX}/tasks?state=running")).text.count('data-task="') \
        == 0


@pytest.mark.asyncio
async def test_bad_filters_and_sequence_numbers_get_a_precise_400(hub: Hub, web: Browser,
                                                                  client: Client) -> None:
    """An unknown state or a non-numeric Last-Event-ID is refused, saying what is wanted."""
    task = await client.submit(argv=["true"])
    await web.login(hub.admin_token)
    res = await web.http.get(f"{PREFIX}/tasks?state=bogus")
    assert res.status_code == 400
    assert "pick one of queued" in res.text
    res = await web.http.get(f"{PREFIX}/tasks/{task.id}/events",
                             headers={"Last-Event-ID": "abc"})
    assert res.status_code == 400
    assert "sequence number" in res.text
    res = await web.http.get(f"{PREFIX}/tasks/nosuch")
    assert res.status_code == 404
    assert "no task" in res.text


# -- the live log -----------------------------------------------------------------------

@pytest.mark.asyncio
async def test_the_log_stream_resumes_after_last_event_id(hub: Hub, node: Agent,
                                                          web: Browser, client: Client
                                                          ) -> None:
    """Every message's id is the event seq; resuming after one sends only what follows,
    and the stream of a finished task ends with `end` naming its final state."""
    script = "import sys\nfor i in range(3):\n    print(f'line {i}', flush=True)\n" \
             "print('oops <b>', file=sys.stderr, flush=True)\n"
    task = await client.submit(argv=[PY, "-c", script])
    async for _ in client.watch(task.id):
        pass
    await web.login(hub.admin_token)
    full = sse_messages((await web.http.get(f"{PREFIX}/tasks/{task.id}/events")).text)
    assert full[-1] == {"event": "end", "data": "succeeded"}
    ids = [int(m["id"]) for m in full[:-1]]
    assert ids == list(range(1, len(ids) + 1))
    text = "".join(m["data"] for m in full if m["event"] == "output")
    assert "line 0" in text
    assert "line 2" in text
    assert "oops &lt;b&gt;" in text
    assert '<span class="stderr">' in text
    cut = ids[len(ids) // 2]
    rest = sse_messages((await web.http.get(f"{PREFIX}/tasks/{task.id}/events",
                                            headers={"Last-Event-ID": str(cut)})).text)
    assert [int(m["id"]) for m in rest[:-1]] == ids[ids.index(cut) + 1:]
    assert rest[-1]["event"] == "end"
    query = sse_messages((await web.http.get(
        f"{PREFIX}/tasks/{task.id}/events?after={ids[-1]}")).text)
    assert query == [{"event": "end", "data": "succeeded"}]


@pytest.mark.asyncio
async def test_the_log_stream_is_live_and_ends_when_the_task_is_cancelled(
        hub: Hub, node: Agent, web: Browser, client: Client) -> None:
    """Output arrives while the task runs; a cancel ends the stream with `end: cancelled`."""
    task = await client.submit(argv=[PY, "-c", FOREVER])
    await web.login(hub.admin_token)
    seen, cancelled = "", False
    async with web.http.stream("GET", f"{PREFIX}/tasks/{task.id}/events") as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        async for chunk in res.aiter_text():
            seen += chunk
            if not cancelled and "event: output\ndata: <span class=\"stdout\">up" in seen:
                cancelled = True     # the output arrived while the task still runs
                await client.cancel(task.id)
            if "event: end" in seen:
                break
    assert cancelled
    assert sse_messages(seen)[-1] == {"event": "end", "data": "cancelled"}


@pytest.mark.asyncio
@pytest.mark.parametrize(("bound", "says"), [
    ("MAX_STREAMS", "this hub already serves 1 live logs"),
    ("MAX_STREAMS_PER_TOKEN", "this login already follows 1 live logs"),  # one token's
], ids=["hub", "token"])
async def test_live_streams_are_bounded_and_counted_until_they_end(
        hub: Hub, node: Agent, web: Browser, client: Client,
        monkeypatch: pytest.MonkeyPatch, bound: str, says: str) -> None:
    """Past the hub's bound, or one token's, a new stream gets 503 with Retry-After; a
    closed one frees its place."""
    monkeypatch.setattr(f"cortex.hub.web._routes.{bound}", 1)
    task = await client.submit(argv=[PY, "-c", FOREVER])
    await web.login(hub.admin_token)
    path = f"{PREFIX}/tasks/{task.id}/events"
    seen = ""
    async with web.http.stream("GET", path) as first:
        # Read to the end (breaking out would close the response and hang up).
        async for chunk in first.aiter_text():
            if not seen:
                assert hub.dashboard.streams.now == 1
                refused = await web.http.get(path)
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "5"
                assert says in refused.text
                await client.cancel(task.id)   # the task ends, so this stream ends
            seen += chunk
    assert sse_messages(seen)[-1] == {"event": "end", "data": "cancelled"}
    assert hub.dashboard.streams.now == 0
    again = await web.http.get(path)
    assert again.status_code == 200


async def follow_until_ended(web: Browser, task_id: str, end_it: Callable[[], Awaitable[None]]
                             ) -> list[dict[str, str]]:
    """The messages of a task's live log, read to its end, calling `end_it` once the
    first output has arrived (the task runs on)."""
    seen, called = "", False
    async with web.http.stream("GET", f"{PREFIX}/tasks/{task_id}/events") as res:
        async for chunk in res.aiter_text():
            seen += chunk
            if not called and "event: output" in seen:
                called = True
                await end_it()
    assert called
    return sse_messages(seen)


@pytest.mark.asyncio
async def test_a_live_stream_ends_when_its_viewer_logs_out_or_loses_the_token(
        hub: Hub, node: Agent, web: Browser, client: Client,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream checked its viewer once at the start would run for as long as the task:
    it is checked again (at each keepalive here), and ends with `end: logged out` after a
    logout, or after the token it was opened with is revoked."""
    monkeypatch.setattr("cortex.hub.web._sse.KEEPALIVE_S", 0.2)
    task = await client.submit(argv=[PY, "-c", FOREVER])
    await web.login(hub.admin_token)

    async def log_out() -> None:
        assert (await web.post(f"{PREFIX}/logout", csrf=web.csrf)).status_code == 303

    messages = await follow_until_ended(web, task.id, log_out)
    assert messages[-1] == {"event": "end", "data": "logged out"}

    viewer = await client.admin.create_api_token("watcher", role="viewer")
    await web.login(viewer.secret)

    async def revoke() -> None:
        await client.admin.revoke_api_token(viewer.token.id)

    messages = await follow_until_ended(web, task.id, revoke)
    assert messages[-1] == {"event": "end", "data": "logged out"}
    assert (await client.get(task.id)).state == 3   # the task runs on: only the view ended
    assert hub.dashboard.streams.now == 0


@pytest.mark.asyncio
async def test_closing_the_dashboard_ends_its_live_streams(
        hub: Hub, node: Agent, web: Browser, client: Client) -> None:
    """When the hub stops, open log streams end (browsers resume later by Last-Event-ID)
    instead of holding the shutdown for its whole grace period."""
    task = await client.submit(argv=[PY, "-c", FOREVER])
    await web.login(hub.admin_token)
    seen = ""
    async with web.http.stream("GET", f"{PREFIX}/tasks/{task.id}/events") as res:
        async for chunk in res.aiter_text():
            seen += chunk
            if "event: output" in seen and not hub.dashboard.closing.is_set():
                hub.dashboard.close()
    assert "event: end" not in seen      # the stream ended without the task ending
    assert (await client.get(task.id)).state == 3   # running


@pytest.mark.asyncio
async def test_an_oversized_form_is_refused_with_400(hub: Hub, web: Browser,
                                                     client: Client) -> None:
    """Forms past 64 KiB are refused before they are parsed, on login and on actions."""
    task = await client.submit(argv=["true"])
    big = {"token": "x" * 70_000, "csrf": "y"}
    res = await web.http.post(f"{PREFIX}/login", data=big)
    assert res.status_code == 400
    assert "form too large" in res.text

    async def chunked() -> AsyncIterator[bytes]:   # no Content-Length: a size not known
        for _ in range(40):
            yield b"pad=" + b"z" * 4096 + b"&"

    res = await web.http.post(f"{PREFIX}/login", content=chunked(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert res.status_code == 400
    assert "unknown size" in res.text
    await web.login(hub.admin_token)
    res = await web.http.post(f"{PREFIX}/tasks/{task.id}/cancel",
                              data={"csrf": web.csrf, "pad": "z" * 70_000})
    assert res.status_code == 400
    assert (await client.get(task.id)).state == 1   # still queued

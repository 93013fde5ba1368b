"""The sessions page over plain HTTP: a session appears with its node and newest action,
the SDK's internal probe sessions do not, and the live view says why there is no frame."""

from __future__ import annotations

import html
import re
import time

import httpx2
import pytest

from cortex.hub.server import Hub
from cortex.hub.web import PREFIX
from cortex.node.agent import Agent
from cortex.sdk import Client

pytestmark = pytest.mark.timeout(60)

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def _logged_in(hub: Hub, http: httpx2.AsyncClient) -> None:
    form = await http.get(f"{PREFIX}/login")
    (secret,) = _CSRF.findall(form.text)
    res = await http.post(f"{PREFIX}/login", data={"token": hub.admin_token, "csrf": secret})
    assert res.status_code == 303


@pytest.mark.asyncio
async def test_a_session_is_listed_with_its_node_and_newest_action(
        hub: Hub, node: Agent, client: Client) -> None:
    """Two tasks pinned to session s-one: listed once, with 2 actions and the newest one
    linked; a ".sessions.*" probe session is not listed; not recording: live view 404
    saying how to get one; an unknown session: 404."""
    first = await client.run(argv=["true"], session_id="s-one")
    newest = await client.run(argv=["echo", "again"], session_id="s-one")
    assert first.ok
    assert newest.ok
    (conn,) = hub.registry.all()
    await hub.store.pin_session("default", ".sessions.probe", conn.node_id, now=time.time())
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{hub.http_port}") as http:
        await _logged_in(hub, http)
        page = (await http.get(f"{PREFIX}/sessions")).text
        row = page[page.index('id="session-s-one"'):]
        row = row[:row.index("</tr>")]
        assert conn.node.name in row
        assert "online" in row
        assert f'href="{PREFIX}/tasks/{newest.task.id}"' in row
        assert "<td>2</td>" in row
        assert "no screenshot" in row
        assert ".sessions.probe" not in page
        fragment = await http.get(f"{PREFIX}/sessions?fragment=1")
        assert fragment.text.lstrip().startswith('<div id="sessions"')
        live = await http.get(f"{PREFIX}/sessions/s-one/live")
        assert live.status_code == 404
        assert "not recording" in html.unescape(live.text)
        await client.run(argv=["true"], session_id="a/b c")
        page = (await http.get(f"{PREFIX}/sessions")).text
        assert 'id="session-a/b c"' in page
        odd = await http.get(f"{PREFIX}/sessions/a/b%20c/live")   # as the page links it
        assert odd.status_code == 404
        assert "session a/b c is not recording" in html.unescape(odd.text)
        unknown = await http.get(f"{PREFIX}/sessions/nope/live")
        assert unknown.status_code == 404
        assert "no session 'nope'" in html.unescape(unknown.text)

"""The browser MCP tools over stdio, driven by the `mcp` package's own client, against a
real hub and node driving a real Chromium on the browser tests' local site."""

from __future__ import annotations

import base64
import contextlib
import io
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import httpx2
import pytest
from mcp import Client as McpClient
from mcp import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ImageContent
from mcp_calls import call, call_error, cancel_task

from cortex.hub.server import Hub
from cortex.mcp import TOOL_NAMES
from cortex.mcp._browser_tools import BROWSER_TOOLS
from cortex.node.agent import Agent
from cortex.skills.browser import find_chromium
from cortex.testing import eventually

sys.path.insert(0, str(Path(__file__).parents[1] / "browser"))
from browser_site import serve_site

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium: run `make system-deps`"),
]


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve_site() as base:
        yield base


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """SQLite only: the MCP server reaches the hub through the SDK (as in test_mcp.py)."""
    return str(tmp_path / "hub" / "hub.db")


@contextlib.asynccontextmanager
async def mcp_server(hub: Hub, tmp_path: Path) -> AsyncIterator[McpClient]:
    """An MCP client session with `python -m cortex mcp` serving `hub` (admin token)."""
    home = tmp_path / "mcp-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"CORTEX_HUB": hub.address, "CORTEX_TOKEN": hub.admin_token,
           "CORTEX_CA": str(hub.config.data_dir / "ca" / "ca.pem"), "CORTEX_HOME": str(home)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "cortex", "mcp"],
                                   env=env)
    async with McpClient(params) as client:
        yield client


@contextlib.asynccontextmanager
async def mcp_http(hub: Hub) -> AsyncIterator[McpClient]:
    """An MCP client session with the hub's /mcp, sending the admin token as bearer."""
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    timeout = httpx2.Timeout(30.0, read=120.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        transport = streamable_http_client(f"http://127.0.0.1:{hub.http_port}/mcp",
                                           http_client=http)
        async with McpClient(transport) as client:
            yield client


def ref_of(snapshot: str, needle: str) -> str:
    line = next(x for x in snapshot.splitlines() if needle in x)
    return line.split("[ref=")[1].split("]")[0]


def test_every_browser_tool_is_registered() -> None:
    """TOOL_NAMES offers each browser tool (so the server gives it a title and hints)."""
    assert set(BROWSER_TOOLS) <= set(TOOL_NAMES)
    assert len(set(TOOL_NAMES)) == len(TOOL_NAMES)


@pytest.mark.asyncio
async def test_an_agent_drives_a_browser_by_refs(hub: Hub, node: Agent, site: str,
                                                 tmp_path: Path) -> None:
    """open, snapshot, type/click by ref, console errors, failed requests, eval, wait,
    screenshot as a decodable image, record start/stop, close; a stale ref, a bad ref, a
    wait that times out and bad act args each fail saying what to do."""
    async with mcp_server(hub, tmp_path) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        for name in BROWSER_TOOLS:
            assert tools[name].output_schema is not None, name
            assert tools[name].annotations is not None, name
        assert tools["browser_snapshot"].annotations.read_only_hint is True  # type: ignore[union-attr]

        opened = await call(mcp, "browser_open", session="mcp", url=f"{site}/login")
        assert opened["session"] == "mcp"
        assert opened["answer"]["tabs"][0]["url"].endswith("/login")

        not_ref = await call_error(mcp, "browser_click", session="mcp", ref="button")
        assert "is not a snapshot ref (like e12); take a snapshot" in not_ref
        late = await call_error(mcp, "browser_wait", session="mcp", text="never there",
                                timeout_s=0.5)
        assert "timed out after 0.5 s waiting for text='never there'" in late
        reserved = await call_error(mcp, "browser_act", session="mcp", action="hover",
                                    args={"_node_id": "x"})
        assert "args may not hold _node_id" in reserved
        unknown = await call_error(mcp, "browser_act", session="mcp", action="scroll",
                                   args={"down": 3})
        assert "scroll does not take down; it takes:" in unknown
        tabs = await call(mcp, "browser_act", session="mcp", action="tabs")
        assert len(tabs["answer"]["tabs"]) == 1

        snap = (await call(mcp, "browser_snapshot", session="mcp"))["snapshot"]
        user = ref_of(snap, 'textbox "User"')
        await call(mcp, "browser_type", session="mcp", ref=user, text="ann")
        await call(mcp, "browser_type", session="mcp", ref=ref_of(snap, 'textbox "Password"'),
                   text="secret", submit=True)
        await call(mcp, "browser_wait", session="mcp", url="**/app")

        stale = await call_error(mcp, "browser_click", session="mcp", ref=user)
        assert f"ref {user} is not on the page any more" in stale
        assert "take a fresh snapshot" in stale

        await call(mcp, "browser_record", session="mcp", op="start", fps=10)
        page = await call(mcp, "browser_snapshot", session="mcp")
        assert page["url"].endswith("/app")
        snap = page["snapshot"]
        assert 'heading "Welcome ann"' in snap
        for button in ("Log errors", "Fetch missing", "Fetch refused", "Later"):
            await call(mcp, "browser_click", session="mcp", ref=ref_of(snap, f'"{button}"'))
        waited = await call(mcp, "browser_wait", session="mcp", text="Arrived late")
        assert waited["answer"]["waited_for"] == "text"

        # The fetches end apart from the actions: poll the records until they are in.
        async def console_error() -> dict[str, Any] | None:
            errors: dict[str, Any] = (await call(mcp, "browser_console", session="mcp",
                                                 level="error"))["answer"]
            return errors if any("boom from button" in e.get("text", "")
                                 for e in errors["events"]) else None

        async def both_failed() -> bool:
            failed = (await call(mcp, "browser_network", session="mcp",
                                 failed_only=True))["answer"]["events"]
            return any(e.get("url", "").endswith("/missing") for e in failed) \
                and any(e["kind"] == "requestfailed" for e in failed)

        errors = await eventually(console_error, "the button's console error")
        await eventually(both_failed, "the 404 and the refused fetch in the network log")
        first = await call(mcp, "browser_console", session="mcp", limit=1)
        assert first["answer"]["more"] is True
        assert f"since={first['answer']['events'][0]['seq']}" in first["hint"]
        newer = await call(mcp, "browser_console", session="mcp", since=errors["last_seq"])
        assert all(e["seq"] > errors["last_seq"] for e in newer["answer"]["events"])

        title = await call(mcp, "browser_eval", session="mcp", expression="document.title")
        assert title["answer"]["value"] == "App"

        shot = await mcp.call_tool("browser_screenshot", {"session": "mcp"})
        assert not shot.is_error
        [image] = [c for c in shot.content if isinstance(c, ImageContent)]
        assert image.mime_type == "image/jpeg"
        data = base64.b64decode(image.data)
        assert data.startswith(b"\xff\xd8")
        with av.open(io.BytesIO(data)) as container:
            frame = next(container.decode(video=0))
            assert min(frame.width, frame.height) > 100
        png = await mcp.call_tool("browser_screenshot", {"session": "mcp", "image": "png",
                                                         "ref": ref_of(snap, '"Later"')})
        [element] = [c for c in png.content if isinstance(c, ImageContent)]
        assert base64.b64decode(element.data).startswith(b"\x89PNG")

        stopped = await call(mcp, "browser_record", session="mcp", op="stop")
        assert stopped["answer"]["segments"][0]["bytes"] > 0
        assert "download" in stopped["hint"]

        closed = await call(mcp, "browser_close", session="mcp")
        assert closed["answer"]["closed"] is True


@pytest.mark.asyncio
async def test_done_when_over_http(hub: Hub, node: Agent, site: str) -> None:
    """Issue #8's done-when through the hub's /mcp: list nodes, run a long command through
    start/status, drive a browser session by refs and fetch a screenshot."""
    async with mcp_http(hub) as mcp:
        [row] = (await call(mcp, "list_nodes"))["nodes"]
        assert "browser" in row["skills"]

        started = await call(mcp, "start_task",
                             argv=[sys.executable, "-c", "import time\nprint('up', flush=True)"
                                   "\ntime.sleep(600)"])
        task_id, out, after_seq = started["task_id"], "", 0
        while "up" not in out:
            page = await call(mcp, "task_output", task_id=task_id, after_seq=after_seq,
                              wait_s=30)
            assert not page["finished"], page
            out, after_seq = out + page["stdout"], page["next_seq"]
        status = await call(mcp, "task_status", task_id=task_id)
        assert status["state"] == "running"
        cancelled = await cancel_task(mcp, task_id)
        assert cancelled["state"] == "cancelled"

        opened = await call(mcp, "browser_open", node_id=row["id"], url=f"{site}/login")
        session = opened["session"]
        snap = (await call(mcp, "browser_snapshot", session=session))["snapshot"]
        await call(mcp, "browser_type", session=session, ref=ref_of(snap, 'textbox "User"'),
                   text="bea")
        await call(mcp, "browser_type", session=session,
                   ref=ref_of(snap, 'textbox "Password"'), text="secret")
        await call(mcp, "browser_click", session=session, ref=ref_of(snap, 'button "Sign in"'))
        await call(mcp, "browser_wait", session=session, text="Welcome bea")
        shot = await mcp.call_tool("browser_screenshot", {"session": session, "full": True})
        [image] = [c for c in shot.content if isinstance(c, ImageContent)]
        with av.open(io.BytesIO(base64.b64decode(image.data))) as container:
            assert next(container.decode(video=0)).height > 100
        await call(mcp, "browser_close", session=session)

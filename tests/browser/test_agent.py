"""The issue's "done when": an agent-style script using only the SDK, through a real hub
(SQLite and Postgres) and a real node, logs into the test site, fills a form, drags an
item, reads console errors and failed requests, records a video and a HAR and downloads
both from the hub - and the session survives a kill -9 of its worker midway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import av
import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import pytest

from cortex.node.agent import Agent
from cortex.sdk import (
    BrowserError,
    BrowserSession,
    Client,
    artifacts_of,
    list_browser_sessions,
)
from cortex.testing import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]


def ref_of(snapshot: str, needle: str) -> str:
    line = next(x for x in snapshot.splitlines() if needle in x)
    return line.split("[ref=")[1].split("]")[0]


def browser_worker_pids() -> list[int]:
    me = psutil.Process()
    return [p.pid for p in me.children(recursive=True)
            if "cortex.workers" in " ".join(p.cmdline()) and "browser" in p.cmdline()]


async def test_agent_script_survives_worker_kill(client: Client, node: Agent, site: str,
                                                 tmp_path: Path) -> None:
    """The whole agent flow, with the worker killed between two actions."""
    [offered] = await client.list_nodes(skill="browser")
    assert offered.capacity.browser_sessions >= 1
    seen: list[dict[str, Any]] = []
    browser = await BrowserSession.open(client, "agent", url=f"{site}/login",
                                        on_event=seen.append)
    try:
        snap = await browser.snapshot()
        await browser.type(ref_of(snap, 'textbox "User"'), "ann")
        await browser.type(ref_of(snap, 'textbox "Password"'), "secret", submit=True)
        await browser.wait(url="**/app")
        await browser.har_start()
        await browser.record_start(fps=10)
        snap = await browser.snapshot()
        assert 'heading "Welcome ann"' in snap
        await browser.fill([{"ref": ref_of(snap, 'textbox "Name"'), "value": "Ann"},
                            {"ref": ref_of(snap, 'checkbox "Gift"'), "value": True}])

        [pid] = browser_worker_pids()
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(20):  # until the node's pool has seen its worker go
            while node._workers is not None and node._workers.statistics().crashed < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

        await browser.drag(from_selector="#apple", to_selector="#bin")
        assert await browser.eval("document.getElementById('bin').textContent") == "dropped apple"
        assert await browser.eval("document.querySelector('input[name=name]').value") == "Ann"
        for button in ("Log errors", "Fetch missing", "Fetch refused"):
            await browser.click(selector=f"text={button}")
        # The clicks start fetches the page runs on its own, apart from the actions: the
        # log and the network record are polled until what they caused has arrived.
        async def console_error() -> bool:
            errors = await browser.logs(kinds=["console"], level="error")
            return any(e["text"] == "boom from button" for e in errors)

        async def both_failed() -> bool:
            failed = await browser.network(failed_only=True)
            return any(e["kind"] == "requestfailed" for e in failed) \
                and any(e.get("status") == 404 for e in failed)

        await eventually(console_error, "the button's console error")
        await eventually(both_failed, "the 404 and the refused fetch in the network log")
        assert any(e.get("kind") == "console" for e in seen), "no live events reached on_event"

        video = await browser.record_stop()
        # One segment per worker; the killed worker's may have had no fragment to write.
        assert 1 <= len(video["segments"]) <= 2
        assert len(video["segments"]) + video["lost_segments"] == 2
        # Every segment was streamed to the hub as it recorded: fetched from its artifacts.
        stored = artifacts_of(video)
        assert len(stored) == 2
        assert all(r["media_type"] == "video/mp4" for r in stored)
        frames = 0
        for local in await browser.save_files(video, tmp_path / "video.mp4"):
            if not local.stat().st_size:
                continue  # the killed worker's segment, when it had no fragment yet
            with av.open(str(local)) as container:
                assert container.streams.video[0].width == 1280
                frames += sum(1 for _ in container.decode(video=0))
        assert frames > 0

        har = await browser.har_stop()
        [har_file] = await browser.save_files(har, tmp_path / "trace.har")
        [row] = artifacts_of(har)
        assert row["artifact_id"] in {f.artifact_id for f in await client.list_artifacts()}
        entries = json.loads(har_file.read_text())["log"]["entries"]
        urls = {e["request"]["url"].replace(site, "") for e in entries}
        assert "/missing" in urls

        assert [s["session"] for s in await list_browser_sessions(client)] == ["agent"]
    finally:
        assert await browser.close()
    with pytest.raises(BrowserError, match="no browser session 'agent' on this node: open it"):
        await BrowserSession(client, "agent").click("e1")


async def test_a_session_that_cannot_be_placed_says_why(client: Client, node: Agent) -> None:
    """Opening a session where no node can take it fails with the placement's reason."""
    with pytest.raises(BrowserError, match="no connected node has label zone=mars"):
        await BrowserSession.open(client, "nowhere", labels={"zone": "mars"}, timeout=1.5)

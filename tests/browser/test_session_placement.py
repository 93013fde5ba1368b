"""The hub places new browser sessions by the room nodes report (issue #6, capacity):
a node at its session limit gets no new session; the opener waits queued, saying why,
until a session closes - through a real hub (SQLite and Postgres), node and Chromium."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cortex.hub.server import Hub
from cortex.sdk import BrowserSession, Client, TaskState
from cortex.testing import running_node

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]


async def _queued_opener(client: Client, session: str) -> str:
    """The reason the queued task opening `session` gives, once it gives one."""
    async with asyncio.timeout(60):
        while True:
            for task in await client.list_tasks(states=[TaskState.QUEUED]):
                if task.spec.session_id.endswith(session):
                    got = await client.get(task.id)
                    if got.reason:
                        return got.reason
            await asyncio.sleep(0.05)


async def test_a_full_node_gets_no_new_session_until_one_closes(
        hub: Hub, client: Client, site: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_BROWSER_SESSIONS", "1")
    async with running_node(hub, tmp_path / "nb"):
        [node] = await client.list_nodes(skill="browser")
        assert node.capacity.browser_sessions == 1
        first = await BrowserSession.open(client, "first", url=f"{site}/")
        async with asyncio.timeout(30):  # the heartbeat after the open reports it
            while (await client.list_nodes(skill="browser"))[0].load.browser_sessions != 1:  # noqa: ASYNC110 - polling the hub
                await asyncio.sleep(0.05)

        opening = asyncio.ensure_future(BrowserSession.open(client, "second", url=f"{site}/"))
        reason = await _queued_opener(client, "second")
        assert reason.startswith("busy: every matching node is at its browser session limit")
        assert not opening.done()
        # An action of the open session is not held back by the limit.
        assert await first.eval("typeof document") == "object"

        assert await first.close()
        async with asyncio.timeout(60):
            second = await opening
        assert await second.eval("1 + 1") == 2
        await second.close()

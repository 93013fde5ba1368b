"""Zombie reaping of cancel_on_disconnect tasks: when the client that follows such a task
goes away and nobody follows it again within the hub's grace, the hub cancels it (and the
node kills its process tree); the task's reason says why.

Deadlines and lost nodes are reaped too; their tests live with the task lifecycle
(tests/integration/test_tasks.py) and the node faults (tests/faults/).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortex.hub.server import Hub
from cortex.sdk import TERMINAL_STATES, Client, ClientConfig, Task, TaskState
from cortex.testing import running_hub, running_node

pytestmark = pytest.mark.asyncio

PY = sys.executable
FOREVER = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
GRACE_S = 2.0  # a watcher must reach the hub within it, even on a loaded machine


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path / "hub", disconnect_grace_s=GRACE_S) as hub, \
            running_node(hub, tmp_path / "n1"):
        yield hub


def connect(hub: Hub) -> Client:
    assert hub.ca is not None
    return Client(ClientConfig(address=hub.address, token=hub.admin_token,
                               ca_pem=hub.ca.cert_pem))


async def follow_until_up(client: Client, task_id: str) -> None:
    seen = b""
    events = client.watch(task_id)
    async with contextlib.aclosing(events):
        async for event in events:
            seen += event.output.data
            if b"up" in seen:
                return
    pytest.fail("the task ended before it printed 'up'")


async def test_a_task_whose_client_went_away_is_cancelled_saying_why(tmp_path: Path) -> None:
    """The follower's client closes; within the grace (plus a reaper pass) the task is
    cancelled with a reason naming cancel_on_disconnect."""
    async with fleet(tmp_path) as hub, connect(hub) as observer:
        async with connect(hub) as owner:
            task = await owner.submit(argv=[PY, "-c", FOREVER], cancel_on_disconnect=True)
            await follow_until_up(owner, task.id)
        done = await finished(observer, task.id)   # by Get: a watcher would keep it alive
        assert done.state == TaskState.CANCELLED
        assert "the client went away" in done.reason
        assert "cancel_on_disconnect" in done.reason


async def test_a_followed_task_outlives_the_grace_and_a_returning_client_keeps_it(
        tmp_path: Path) -> None:
    """While someone follows it, the task runs past the grace; a client that comes back
    within the grace keeps it running; tasks without the flag are never reaped this way."""
    async with fleet(tmp_path) as hub, connect(hub) as client:
        flagged = await client.submit(argv=[PY, "-c", FOREVER], cancel_on_disconnect=True)
        plain = await client.submit(argv=[PY, "-c", FOREVER])
        watching = asyncio.create_task(_drain(client, flagged.id))
        await follow_until_up(client, plain.id)
        await asyncio.sleep(GRACE_S * 2)   # two graces with a follower: still running
        assert (await client.get(flagged.id)).state == TaskState.RUNNING
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        back = asyncio.create_task(_drain(client, flagged.id))   # back within the grace
        await asyncio.sleep(GRACE_S * 2)
        assert (await client.get(flagged.id)).state == TaskState.RUNNING
        assert (await client.get(plain.id)).state == TaskState.RUNNING
        back.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await back
        assert (await finished(client, flagged.id)).state == TaskState.CANCELLED
        await client.cancel(plain.id)


async def finished(client: Client, task_id: str) -> Task:
    """The task once it is finished, polled with Get (which does not follow it)."""
    async with asyncio.timeout(30):
        while True:
            task = await client.get(task_id)
            if task.state in TERMINAL_STATES:
                return task
            await asyncio.sleep(0.1)


async def _drain(client: Client, task_id: str) -> None:
    async for _ in client.watch(task_id):
        pass

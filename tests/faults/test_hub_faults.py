"""Hub faults against real `cortex hub` / `cortex node` processes: kill -9 of the hub while
a task runs, while its results are produced, and while tasks wait in the queue.

The hub restarts on the same data dir and ports; nodes and watchers reconnect by
themselves. Each test checks that nothing accepted is lost and nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cortex.sdk import TaskEvent, TaskState

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

PY = sys.executable
QUICK_BEATS = ("--heartbeat-interval", "0.5")

# Prints 1..N, one line every D seconds: `PY -c LINES N D MARKER`.
LINES = """\
import sys, time
for i in range(1, int(sys.argv[1]) + 1):
    print(i, flush=True)
    time.sleep(float(sys.argv[2]))
"""
# Prints 1..N; after line 5 waits for the GATE file to exist: `PY -c GATED N GATE MARKER`.
GATED = """\
import os, sys, time
for i in range(1, int(sys.argv[1]) + 1):
    print(i, flush=True)
    if i == 5:
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.01)
"""
RAN_ONCE = [(1, "QUEUED"), (1, "ASSIGNED"), (1, "RUNNING"), (1, "SUCCEEDED")]


def numbered(n: int) -> str:
    return "".join(f"{i}\n" for i in range(1, n + 1))


async def test_hub_killed_mid_task_loses_no_output_and_repeats_none(fleet: Fleet) -> None:
    """kill -9 of the hub mid-task, restart on the same data dir and ports: the node comes
    back by itself, the task succeeds, and both a fresh watch from seq 0 and a watch that was
    connected through the kill see every line exactly once, in order."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    n1, _ = await fleet.start_node(hub, client, "n1")
    task = await client.submit(argv=[PY, "-c", LINES, "40", "0.05", fleet.marker])

    live: list[TaskEvent] = []
    seen_10 = asyncio.Event()

    async def follow() -> None:
        stream = client.watch(task.id)
        async with contextlib.aclosing(stream):
            async for event in stream:
                live.append(event)
                if "10\n" in "".join(e.output.data.decode() for e in live):
                    seen_10.set()

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(follow())
        async with asyncio.timeout(30):
            await seen_10.wait()

        hub.kill()
        await fleet.restart_hub(hub)
        await fleet.node_online(client, "n1", n1)
        done = await fleet.finished(client, task.id)
        async with asyncio.timeout(30):
            await watcher

    assert (done.state, done.exit_code) == (TaskState.SUCCEEDED, 0), done.reason
    events = await fleet.history(client, task.id)
    events.assert_dense()
    assert events.stdout() == numbered(40)
    assert events.states() == RAN_ONCE
    assert [e.seq for e in live] == events.seqs()
    assert "".join(e.output.data.decode() for e in live) == numbered(40)


async def test_output_produced_while_the_hub_is_down_arrives_exactly_once(
        fleet: Fleet, tmp_path: Path) -> None:
    """A task that prints and exits while the hub is down (SIGKILL): after the restart the
    node replays its journal and the task ends SUCCEEDED with all its output, once."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    n1, _ = await fleet.start_node(hub, client, "n1")
    gate = tmp_path / "gate"
    task = await client.submit(argv=[PY, "-c", GATED, "20", str(gate), fleet.marker])
    await fleet.until_output(client, task.id, "5\n")

    hub.kill()
    gate.touch()

    async def journaled_end() -> bool:
        row = fleet.journal_row(n1, task.id, 1)
        return row is not None and row["finished"] == 1

    await fleet.eventually(journaled_end, "node n1 journals the task's end", node=n1)
    await fleet.restart_hub(hub)

    done = await fleet.finished(client, task.id)
    assert (done.state, done.exit_code) == (TaskState.SUCCEEDED, 0), done.reason
    events = await fleet.history(client, task.id)
    events.assert_dense()
    assert events.stdout() == numbered(20)
    assert events.states() == RAN_ONCE


async def test_queued_tasks_survive_a_hub_kill_and_can_still_be_cancelled(
        fleet: Fleet) -> None:
    """Tasks queued for a label no node has survive kill -9 of the hub: still queued, once
    each, with their reason; cancelling them afterwards works."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    await fleet.start_node(hub, client, "n1")
    ids = [(await client.submit(argv=[PY, "-c", "print(1)", fleet.marker],
                                labels={"fault-gpu": "absent"})).id for _ in range(3)]

    async def reasons() -> dict[str, str] | None:
        tasks = [await client.get(task_id) for task_id in ids]
        if all(t.state == TaskState.QUEUED and "fault-gpu=absent" in t.reason for t in tasks):
            return {t.id: t.reason for t in tasks}
        return None

    before = await fleet.eventually(reasons, "each task queued with its reason")

    hub.kill()
    await fleet.restart_hub(hub)

    queued = await client.list_tasks(states=["queued"])
    assert sorted(t.id for t in queued) == sorted(ids)
    assert len(await client.list_tasks()) == len(ids)
    assert await fleet.eventually(reasons, "each task queued with its reason again") == before

    first = await client.cancel(ids[0], reason="no gpu after all")
    assert first.state == TaskState.CANCELLED
    assert [(await client.get(i)).state for i in ids[1:]] == [TaskState.QUEUED] * 2
    for task_id in ids[1:]:
        await client.cancel(task_id)
    for task_id in ids:
        events = await fleet.history(client, task_id)
        events.assert_dense()
        assert events.states() == [(1, "QUEUED"), (1, "CANCELLED")]


async def test_run_through_a_hub_kill_resumes_and_keeps_every_line_once(fleet: Fleet) -> None:
    """`client.run()` is one TaskService.Run stream; kill -9 of the hub mid-task breaks it
    after the task was accepted, and run() goes on through a resumed watch: the Result
    holds every line exactly once and the callback saw each once, in order."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    n1, _ = await fleet.start_node(hub, client, "n1")
    lines: list[bytes] = []
    seen_10 = asyncio.Event()

    def on_stdout(data: bytes) -> None:
        lines.append(data)
        if b"10\n" in b"".join(lines):
            seen_10.set()

    running = asyncio.ensure_future(client.run(
        argv=[PY, "-c", LINES, "40", "0.05", fleet.marker], stdout=on_stdout))
    async with asyncio.timeout(30):
        await seen_10.wait()
    hub.kill()
    await fleet.restart_hub(hub)
    await fleet.node_online(client, "n1", n1)
    async with asyncio.timeout(60):
        result = await running
    assert (result.task.state, result.exit_code) == (TaskState.SUCCEEDED, 0), result.task.reason
    assert result.stdout.decode() == numbered(40)
    assert b"".join(lines).decode() == numbered(40)
    assert len(result.task.attempts) == 1

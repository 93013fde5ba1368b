"""Watching a task's event log: dense sequence numbers, ordered states, history-only reads,
and resuming after a disconnect without losing or repeating an event."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest

from cortex.node.agent import Agent
from cortex.sdk import TERMINAL_STATES, Client, TaskEvent, TaskState
from cortex.sdk import OutputStream as Stream

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
QUEUED, ASSIGNED, RUNNING = TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING
SUCCEEDED = TaskState.SUCCEEDED
# Prints "first", waits for the file named by argv[1] to exist, prints "second".
GATED = (
    "import os, sys, time\n"
    "print('first', flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.01)\n"
    "print('second', flush=True)\n"
)
# Output on both streams in several flushes, so the log holds many events.
CHATTY = (
    "import sys, time\n"
    "for i in range(20):\n"
    "    print(f'out {i}', flush=True)\n"
    "    print(f'err {i}', file=sys.stderr, flush=True)\n"
    "    time.sleep(0.01)\n"
)
# A hang guard for calls that must return on their own; never a timing assertion.
RETURNS_WITHIN_S = 15


async def collect(client: Client, task_id: str, *, after_seq: int = 0,
                  follow: bool = True) -> list[TaskEvent]:
    events = client.watch(task_id, after_seq=after_seq, follow=follow)
    async with contextlib.aclosing(events):
        return [ev async for ev in events]


async def history(client: Client, task_id: str) -> list[TaskEvent]:
    """The stored log of `task_id` (follow=False), bounded so a hang fails clearly."""
    try:
        return await asyncio.wait_for(collect(client, task_id, follow=False), RETURNS_WITHIN_S)
    except TimeoutError:
        pytest.fail(f"watch(follow=False) of {task_id} did not return: it followed live events")


def seqs(events: list[TaskEvent]) -> list[int]:
    return [ev.seq for ev in events]


def states(events: list[TaskEvent]) -> list[int]:
    return [ev.state.state for ev in events if ev.HasField("state")]


@pytest.mark.asyncio
async def test_seqs_are_dense_from_one_and_states_are_in_lifecycle_order(
        client: Client, node: Agent) -> None:
    """Seqs run 1..last_seq without gaps; states go queued, assigned, running, succeeded."""
    task = await client.submit(argv=[PY, "-c", CHATTY])
    live = await collect(client, task.id)
    final = await client.get(task.id)
    assert seqs(live) == list(range(1, final.last_seq + 1))
    assert states(live) == [QUEUED, ASSIGNED, RUNNING, SUCCEEDED]
    kinds = ["state" if ev.HasField("state") else "output" for ev in live]
    assert kinds[:3] == ["state"] * 3
    assert kinds[-1] == "state"
    assert all(ev.task_id == task.id and ev.attempt == 1 for ev in live)
    out = b"".join(ev.output.data for ev in live
                   if ev.HasField("output") and ev.output.stream == Stream.STDOUT)
    err = b"".join(ev.output.data for ev in live
                   if ev.HasField("output") and ev.output.stream == Stream.STDERR)
    assert out == b"".join(f"out {i}\n".encode() for i in range(20))
    assert err == b"".join(f"err {i}\n".encode() for i in range(20))
    assert await history(client, task.id) == live


@pytest.mark.asyncio
async def test_watch_resumed_after_n_events_gets_the_rest_exactly_once(
        client: Client, node: Agent, tmp_path: Path) -> None:
    """Stopping after N events and resuming with after_seq=N yields the rest exactly once."""
    gate = tmp_path / "gate"
    task = await client.submit(argv=[PY, "-c", GATED, str(gate)], timeout=30)
    before: list[TaskEvent] = []
    events = client.watch(task.id)
    async with contextlib.aclosing(events):
        async for ev in events:
            before.append(ev)
            if ev.HasField("output") and b"first" in ev.output.data:
                break
    n = before[-1].seq
    assert not set(states(before)) & TERMINAL_STATES
    gate.touch()
    after = await collect(client, task.id, after_seq=n)
    assert after, "the resumed watch saw nothing"
    assert after[0].seq == n + 1
    whole = before + after
    assert seqs(whole) == list(range(1, len(whole) + 1))
    assert states(whole)[-1] == SUCCEEDED
    assert whole == await history(client, task.id)


@pytest.mark.asyncio
async def test_resuming_a_finished_task_from_every_seq_yields_exactly_the_rest(
        client: Client, node: Agent) -> None:
    """For every N in 0..last_seq, watch(after_seq=N) of a finished task is history[N:]."""
    task = await client.submit(argv=[PY, "-c", CHATTY])
    whole = await collect(client, task.id)
    assert seqs(whole) == list(range(1, len(whole) + 1))
    for n in range(len(whole) + 1):
        assert await collect(client, task.id, after_seq=n) == whole[n:], f"after_seq={n}"
    assert await history(client, task.id) == whole


@pytest.mark.asyncio
async def test_follow_false_returns_history_only_while_the_task_runs(
        client: Client, node: Agent, tmp_path: Path) -> None:
    """watch(follow=False) of a running task returns the history so far and ends at once."""
    gate = tmp_path / "gate"
    task = await client.submit(argv=[PY, "-c", GATED, str(gate)], timeout=30)
    live: list[TaskEvent] = []
    events = client.watch(task.id)
    async with contextlib.aclosing(events):
        async for ev in events:
            live.append(ev)
            if ev.HasField("output") and b"first" in ev.output.data:
                break
    snapshot = await history(client, task.id)
    assert (await client.get(task.id)).state == RUNNING
    assert snapshot[: len(live)] == live
    assert seqs(snapshot) == list(range(1, len(snapshot) + 1))
    assert not set(states(snapshot)) & TERMINAL_STATES
    gate.touch()
    rest = await collect(client, task.id, after_seq=snapshot[-1].seq)
    assert states(rest)[-1] == SUCCEEDED
    assert seqs(snapshot + rest) == list(range(1, len(snapshot) + len(rest) + 1))


@pytest.mark.asyncio
async def test_follow_false_of_a_queued_task_returns_without_waiting(
        client: Client, node: Agent) -> None:
    """watch(follow=False) of a task that cannot be placed returns its one QUEUED event."""
    task = await client.submit(argv=["true"], labels={"pool": "nowhere"}, timeout=60)
    snapshot = await history(client, task.id)
    assert seqs(snapshot) == [1]
    assert states(snapshot) == [QUEUED]
    await client.cancel(task.id)


@pytest.mark.asyncio
async def test_concurrent_watchers_see_the_same_log(client: Client, node: Agent) -> None:
    """Several watchers of one live task each receive the identical, complete log."""
    task = await client.submit(argv=[PY, "-c", CHATTY])
    logs = await asyncio.gather(*(collect(client, task.id) for _ in range(5)))
    assert all(log == logs[0] for log in logs)
    assert seqs(logs[0]) == list(range(1, (await client.get(task.id)).last_seq + 1))

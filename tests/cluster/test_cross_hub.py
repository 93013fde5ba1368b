"""Hubs on one Postgres, no balancer: a task submitted on hub A runs on a node connected
to hub B, is watched from hub C and cancelled from hub A; a node whose hub died for good
has its tasks failed over by another hub; hub ids are unique among live hubs."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from cluster_harness import Cluster, eventually, numbered_lines, stored_attempts

from cortex.sdk import NodeState, TaskState
from cortex.testing import HubProcess

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.asyncio
async def test_submit_on_a_run_via_b_watch_from_c_cancel_from_a(cluster: Cluster) -> None:
    a, b, c = await cluster.start_hubs(3)
    on_a, on_b, on_c = (cluster.client(h.address) for h in (a, b, c))
    await cluster.start_node(on_b, b.address, f"127.0.0.1:{b.node_port}", "n1")

    # Finishes: its whole log arrives through C, exactly once and in order.
    done = await on_a.submit(argv=["sh", "-c", "for i in 1 2 3; do echo line-$i; done",
                                   cluster.marker])
    events = [ev async for ev in on_c.watch(done.id)]
    out = b"".join(e.output.data for e in events if e.HasField("output")).decode()
    assert out == numbered_lines(3)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert (await on_a.get(done.id)).state == TaskState.SUCCEEDED
    # Waiting on a hub that never held the task.
    finished = [t async for t in on_c.wait_many([done.id])]
    assert [t.state for t in finished] == [TaskState.SUCCEEDED]

    # Cancelled from A while B's node runs it; C's watcher sees the end.
    long = await on_a.submit(argv=["sh", "-c", "echo started; exec sleep 60",
                                   cluster.marker])
    seen: list[str] = []

    async def watch_from_c() -> None:
        async for ev in on_c.watch(long.id):
            if ev.HasField("output"):
                seen.append(ev.output.data.decode())
            if ev.HasField("state"):
                seen.append(TaskState.Name(ev.state.state))

    watcher = asyncio.create_task(watch_from_c())
    try:
        await eventually(lambda: _has(seen, "started\n"), "the task's output on C")
        cancelled = await on_a.cancel(long.id, reason="from hub A")
        assert cancelled.cancel_requested or cancelled.state == TaskState.CANCELLED
        await asyncio.wait_for(watcher, 30)
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
    final = await on_b.get(long.id)
    assert final.state == TaskState.CANCELLED, final.reason
    assert "from hub A" in final.reason
    assert seen[-1] == "CANCELLED"
    assert len(stored_attempts(cluster)[long.id]) == 1


async def _has(seen: list[str], item: str) -> bool:
    return item in seen


@pytest.mark.asyncio
async def test_a_node_whose_hub_died_for_good_has_its_tasks_lost_and_retried(
        cluster: Cluster) -> None:
    """Hub B is killed and its node cannot reach another hub: once the node's lease
    expires, hub A takes it over, marks the node offline and fails its task over (`lost`,
    then retried per its policy), exactly as one hub does after lost_after."""
    a, b = await cluster.start_hubs(2)
    on_a = cluster.client(a.address)
    await cluster.start_node(cluster.client(b.address), b.address,
                             f"127.0.0.1:{b.node_port}", "n1")
    task = await on_a.submit(argv=["sh", "-c", "echo started; exec sleep 120",
                                   cluster.marker], max_attempts=2)

    async def running() -> bool:
        return (await on_a.get(task.id)).state == TaskState.RUNNING

    await eventually(running, "the task running on B's node")
    cluster.kill_hub(b)

    async def retried() -> bool:
        return (await on_a.get(task.id)).attempt == 2

    await eventually(retried, "the task lost and queued again by hub A")
    again = await on_a.get(task.id)
    assert again.state == TaskState.QUEUED
    first = again.attempts[0]
    assert first.state == TaskState.LOST
    assert "its hub is gone" in first.reason
    (node,) = await on_a.list_nodes(labels={"cluster-node": "n1"})
    assert node.state != NodeState.ONLINE


@pytest.mark.asyncio
async def test_a_second_live_hub_with_the_same_id_is_refused(cluster: Cluster) -> None:
    (a,) = await cluster.start_hubs(1)
    twin = HubProcess(cluster.root / "twin", http_port=-1, extra=(
        "--store", cluster.store_url, "--hub-id", "hub-1", "--lost-after", "3",
        "--heartbeat-interval", "1"))
    cluster.hubs.append(twin)
    with pytest.raises(RuntimeError, match="held by another live hub"):
        await asyncio.to_thread(twin.start, 60.0)
    assert a.proc is not None
    assert a.proc.poll() is None


@pytest.mark.asyncio
async def test_input_through_a_hub_that_does_not_hold_the_task_reaches_it(
        cluster: Cluster) -> None:
    """Attach on hub C to a task that B's node runs: C relays the input (through the
    store's feed) to B, in order, big input in parts."""
    _, b, c = await cluster.start_hubs(3)
    on_b, on_c = cluster.client(b.address), cluster.client(c.address)
    await cluster.start_node(on_b, b.address, f"127.0.0.1:{b.node_port}", "n1")
    task = await on_c.submit(argv=["sh", "-c", "read x; echo got-$x; wc -c",
                                   cluster.marker], interactive=True, timeout=60)
    out = b""
    async with on_c.attach(task.id) as att:
        await att.send_stdin(b"hello\n")
        await att.send_stdin(b"y" * 10_000)
        await att.close_stdin()
        events = att.events()
        async with contextlib.aclosing(events):
            async for ev in events:
                if ev.HasField("output"):
                    out += ev.output.data
    assert out.split() == [b"got-hello", b"10000"], out
    assert (await on_b.get(task.id)).state == TaskState.SUCCEEDED

"""Node faults against real `cortex hub` / `cortex node` processes: kill -9 mid-task,
restart mid-task, SIGTERM drains, and a second node agent starting on the same machine.

Each test checks that nothing the hub accepted is lost and nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cortex.sdk import NodeState, TaskState

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

PY = sys.executable
# Heartbeats every 0.5 s; a node silent for 2 s loses its tasks.
FAST_LOSS = ("--lost-after", "2", "--heartbeat-interval", "0.5")
QUICK_BEATS = ("--heartbeat-interval", "0.5")  # lost after the default 15 s

# The first attempt (no flag file yet) creates the flag, says so and sleeps; any later
# attempt finds the flag and exits 0 at once: `PY -c ONCE FLAG MARKER`.
ONCE = """\
import os, sys, time
flag = sys.argv[1]
if os.path.exists(flag):
    print("second attempt", flush=True)
else:
    open(flag, "w").close()
    print("first attempt", flush=True)
    time.sleep(60)
"""
# Says "begin", works for 2 s, says "done".
SLOW = "import time; print('begin', flush=True); time.sleep(2); print('done', flush=True)"
# Says "begin", then sleeps for the given seconds.
SLEEPER = "import sys, time; print('begin', flush=True); time.sleep(float(sys.argv[1]))"

LOST_THEN_RETRIED = [
    (1, "QUEUED"), (1, "ASSIGNED"), (1, "RUNNING"), (1, "LOST"),
    (2, "QUEUED"), (2, "ASSIGNED"), (2, "RUNNING"), (2, "SUCCEEDED"),
]


def ran_once(final: str) -> list[tuple[int, str]]:
    return [(1, "QUEUED"), (1, "ASSIGNED"), (1, "RUNNING"), (1, final)]


async def test_node_killed_mid_task_is_lost_retried_elsewhere_and_its_late_report_refused(
        fleet: Fleet, tmp_path: Path) -> None:
    """kill -9 of a node mid-task: attempt 1 is LOST, attempt 2 succeeds on another node, and
    the restarted node's late report of attempt 1 is refused (its leftover process killed)."""
    hub = await fleet.start_hub(*FAST_LOSS)
    client = fleet.client(hub)
    n1, n1_id = await fleet.start_node(hub, client, "n1")
    task = await client.submit(argv=[PY, "-c", ONCE, str(tmp_path / "flag"), fleet.marker],
                               max_attempts=2)
    await fleet.until_output(client, task.id, "first attempt\n")
    [leftover] = fleet.task_processes()

    n1.kill()
    assert not fleet.gone(leftover), "the task died with its agent: nothing left to clean up"
    held = fleet.journal_row(n1, task.id, 1)
    assert held is not None, "node n1's journal lost attempt 1"
    assert (held["finished"], held["pid"]) == (0, leftover.pid)

    await fleet.watch_until(client, task.id, lambda log: (2, "QUEUED") in log.states(),
                            "attempt 1 lost and attempt 2 queued")
    _, n2_id = await fleet.start_node(hub, client, "n2")
    done = await fleet.finished(client, task.id)
    assert (done.state, done.attempt, done.node_id) == (TaskState.SUCCEEDED, 2, n2_id)
    assert (done.has_exit_code, done.exit_code) == (True, 0)
    assert [(a.attempt, TaskState.Name(a.state), a.node_id) for a in done.attempts] == [
        (1, "LOST", n1_id), (2, "SUCCEEDED", n2_id)]

    await fleet.restart_node(n1, client, "n1")

    async def refused() -> bool:
        row = fleet.journal_row(n1, task.id, 1)
        return row is not None and row["dropped"] == 1

    await fleet.eventually(refused, "node n1 drops attempt 1 once the hub refuses it", node=n1)
    await fleet.until_gone(leftover, "the restarted node kills attempt 1's leftover process")

    final = await client.get(task.id)
    assert (final.state, final.attempt, final.node_id) == (TaskState.SUCCEEDED, 2, n2_id)
    assert (final.has_exit_code, final.exit_code) == (True, 0)
    assert [(a.attempt, a.state) for a in final.attempts] == [
        (1, TaskState.LOST), (2, TaskState.SUCCEEDED)]
    events = await fleet.history(client, task.id)
    events.assert_dense()
    assert events.states() == LOST_THEN_RETRIED
    lost = events.states().index((1, "LOST"))
    after_loss = [e for e in events if e.HasField("state")][lost].seq
    assert [e.seq for e in events if e.attempt == 1 and e.seq > after_loss] == []
    assert events.stdout(attempt=1) == "first attempt\n"
    assert events.stdout(attempt=2) == "second attempt\n"


async def test_node_restarted_mid_task_reports_the_attempt_lost_and_kills_its_leftover(
        fleet: Fleet, tmp_path: Path) -> None:
    """A node killed -9 and restarted within the hub's lost bound kills the task it left
    behind and reports that attempt LOST itself; the retry runs once, on the same node."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    n1, n1_id = await fleet.start_node(hub, client, "n1")
    task = await client.submit(argv=[PY, "-c", ONCE, str(tmp_path / "flag"), fleet.marker],
                               max_attempts=2)
    await fleet.until_output(client, task.id, "first attempt\n")
    [leftover] = fleet.task_processes()

    n1.kill()
    assert not fleet.gone(leftover), "the task died with its agent: nothing left to clean up"
    await fleet.restart_node(n1, client, "n1")
    await fleet.until_gone(leftover, "the restarted node kills attempt 1's leftover process")

    done = await fleet.finished(client, task.id)
    assert (done.state, done.attempt, done.node_id) == (TaskState.SUCCEEDED, 2, n1_id)
    first, second = done.attempts
    assert (first.attempt, first.state) == (1, TaskState.LOST)
    assert (second.attempt, second.state) == (2, TaskState.SUCCEEDED)
    assert "restarted" in first.reason, first.reason  # the node said so, not the reaper
    events = await fleet.history(client, task.id)
    events.assert_dense()
    assert events.states() == LOST_THEN_RETRIED
    assert events.stdout(attempt=1) == "first attempt\n"
    assert events.stdout(attempt=2) == "second attempt\n"


async def test_sigterm_lets_the_running_task_finish_then_the_node_exits_0(
        fleet: Fleet) -> None:
    """SIGTERM drains: the running task finishes SUCCEEDED with all its output, a task
    submitted meanwhile stays queued (the draining node takes none), the node exits 0."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    n1, _ = await fleet.start_node(hub, client, "n1")
    task = await client.submit(argv=[PY, "-c", SLOW, fleet.marker])
    await fleet.until_output(client, task.id, "begin\n")

    n1.signal(signal.SIGTERM)

    async def draining() -> bool:
        node = await fleet.find_node(client, "n1")
        return node is not None and node.state == NodeState.DRAINING

    await fleet.eventually(draining, "node n1 draining", node=n1)
    later = await client.submit(argv=[PY, "-c", "print('never')", fleet.marker])
    done = await fleet.finished(client, task.id)
    assert (done.state, done.exit_code) == (TaskState.SUCCEEDED, 0), done.reason
    events = await fleet.history(client, task.id)
    events.assert_dense()
    assert events.stdout() == "begin\ndone\n"
    assert events.states() == ran_once("SUCCEEDED")
    assert await asyncio.to_thread(n1.wait, 30) == 0, n1.log()

    pending = await client.get(later.id)
    assert (pending.state, pending.attempt) == (TaskState.QUEUED, 1), pending.reason
    assert (await fleet.history(client, later.id)).states() == [(1, "QUEUED")]


async def test_drain_grace_shorter_than_the_task_cancels_it_for_shutdown(
        fleet: Fleet) -> None:
    """With --drain-grace 1 and a 30 s task, SIGTERM ends the task CANCELLED with a reason
    naming the shutdown, kills its process, and the node exits 0."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    n1, _ = await fleet.start_node(hub, client, "n1", "--drain-grace", "1")
    task = await client.submit(argv=[PY, "-c", SLEEPER, "30", fleet.marker])
    await fleet.until_output(client, task.id, "begin\n")
    [proc] = fleet.task_processes()

    n1.signal(signal.SIGTERM)
    done = await fleet.finished(client, task.id)
    assert done.state == TaskState.CANCELLED, TaskState.Name(done.state)
    assert "shutting down" in done.reason, done.reason
    assert await asyncio.to_thread(n1.wait, 30) == 0, n1.log()
    assert fleet.gone(proc)
    events = await fleet.history(client, task.id)
    events.assert_dense()
    assert events.stdout() == "begin\n"
    assert events.states() == ran_once("CANCELLED")


async def test_a_node_starting_on_the_same_machine_leaves_other_nodes_tasks_running(
        fleet: Fleet) -> None:
    """A second node agent starting on this machine does not kill a task another, live node
    agent runs (start-up clean-up of stale task cgroups must touch only its own)."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    await fleet.start_node(hub, client, "n1")
    task = await client.submit(argv=[PY, "-c", SLEEPER, "60", fleet.marker])
    await fleet.until_output(client, task.id, "begin\n")
    [proc] = fleet.task_processes()

    await fleet.start_node(hub, client, "n2", machine="n1")
    assert not fleet.gone(proc), "starting node n2 killed the task node n1 runs"
    running = await client.get(task.id)
    assert running.state == TaskState.RUNNING, (TaskState.Name(running.state), running.reason)

    await client.cancel(task.id, reason="test over")
    assert (await fleet.finished(client, task.id)).state == TaskState.CANCELLED

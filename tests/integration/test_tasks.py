"""Shell and noop tasks end to end: a real hub and node in-process over loopback mTLS.

Output, stdin, PTY, cancel of a whole process tree, timeouts, idempotency, placement
reasons, retries, listing, and big outputs (complete and in order, or cut at the bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import sys
import uuid
from pathlib import Path

import grpc
import psutil
import pytest

from cortex._proto.cortex.v1 import tasks_pb2, tasks_pb2_grpc
from cortex._proto.cortex.v1.common_pb2 import RetryPolicy, ShellSpec
from cortex.hub.server import Hub
from cortex.node.agent import Agent
from cortex.sdk import TERMINAL_STATES, Client, NodeState, TaskEvent, TaskSpec, TaskState
from cortex.sdk import OutputStream as Stream
from cortex.testing import eventually, running_node

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
QUEUED, ASSIGNED, RUNNING = TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING
SUCCEEDED, FAILED, CANCELLED = TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED
TIMED_OUT = TaskState.TIMED_OUT
TREE_MARK = "CORTEX_TEST_TREE"

# Prints "first", waits for the file named by argv[1] to exist, prints "second". The
# waiting is the task's own business; the test only creates the file.
GATED = (
    "import os, sys, time\n"
    "print('first', flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.01)\n"
    "print('second', flush=True)\n"
)
# Writes argv[1] numbered 100-byte lines: b'00000000 xxxx...x\n'.
NUMBERED = (
    "import sys\n"
    "w = sys.stdout.buffer.write\n"
    "pad = b'x' * 90\n"
    "for i in range(int(sys.argv[1])):\n"
    "    w(b'%08d %s\\n' % (i, pad))\n"
)
LINE_BYTES = 100


def numbered(n: int) -> bytes:
    """What NUMBERED prints for `n` lines."""
    pad = b"x" * 90
    return b"".join(b"%08d %s\n" % (i, pad) for i in range(n))


async def all_events(client: Client, task_id: str) -> list[TaskEvent]:
    """Every event of `task_id`, following it until it is finished."""
    events = client.watch(task_id)
    async with contextlib.aclosing(events):
        return [ev async for ev in events]


def state_events(events: list[TaskEvent]) -> list[int]:
    return [ev.state.state for ev in events if ev.HasField("state")]


# --- output ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_argv_task_returns_exit_code_and_separate_stdout_stderr(
        client: Client, node: Agent) -> None:
    """An argv task's exit code comes back, with stdout and stderr kept apart."""
    result = await client.run(argv=["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result.state == FAILED
    assert result.exit_code == 3
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert "exit code 3" in result.task.reason


@pytest.mark.asyncio
async def test_shell_string_runs_through_sh(client: Client, node: Agent) -> None:
    """A command string runs through /bin/sh -c (expansion, redirection) and succeeds."""
    result = await client.run(command="x=4; echo $((x * 10)); echo note >&2")
    assert result.ok, result.task.reason
    assert result.exit_code == 0
    assert result.stdout == b"40\n"
    assert result.stderr == b"note\n"


@pytest.mark.asyncio
async def test_live_output_arrives_before_the_task_ends(
        client: Client, node: Agent, tmp_path: Path) -> None:
    """A task's first line reaches a watcher while the task still runs (it waits for us)."""
    gate = tmp_path / "gate"
    task = await client.submit(argv=[PY, "-c", GATED, str(gate)], timeout=30)
    out = b""
    seen: list[int] = []
    released = False
    events = client.watch(task.id)
    async with contextlib.aclosing(events):
        async for ev in events:
            if ev.HasField("state"):
                seen.append(ev.state.state)
                continue
            assert ev.output.stream == Stream.STDOUT
            out += ev.output.data
            if not released and out == b"first\n":
                assert not set(seen) & TERMINAL_STATES, seen
                assert (await client.get(task.id)).state == RUNNING
                gate.touch()
                released = True
    assert released, f"never saw the first line alone; output was {out!r}"
    assert out == b"first\nsecond\n"
    assert seen[-1] == SUCCEEDED


@pytest.mark.asyncio
async def test_hundred_concurrent_tasks_each_get_their_own_output(
        client: Client, node: Agent) -> None:
    """100 tasks submitted at once all succeed, each with exactly its own stdout/stderr."""
    results = await asyncio.gather(*(
        client.run(argv=["sh", "-c", f"echo out-{i}; echo err-{i} >&2"]) for i in range(100)
    ))
    assert len({r.task.id for r in results}) == 100
    for i, r in enumerate(results):
        assert r.ok, (i, r.task.reason)
        assert r.stdout == f"out-{i}\n".encode()
        assert r.stderr == f"err-{i}\n".encode()


@pytest.mark.asyncio
async def test_fifty_megabytes_of_output_arrive_complete_and_in_order(
        client: Client, node: Agent) -> None:
    """50 MiB of numbered lines reach a watcher byte for byte, in order, seqs contiguous."""
    lines = 50 * 1024 * 1024 // LINE_BYTES
    expected = hashlib.sha256(numbered(lines)).hexdigest()
    task = await client.submit(argv=[PY, "-c", NUMBERED, str(lines)], timeout=50)
    digest = hashlib.sha256()
    size, newlines, last_seq, states = 0, 0, 0, []
    events = client.watch(task.id)
    async with contextlib.aclosing(events):
        async for ev in events:
            assert ev.seq == last_seq + 1, f"seq {ev.seq} after {last_seq}"
            last_seq = ev.seq
            if ev.HasField("state"):
                states.append(ev.state.state)
                continue
            assert ev.output.stream == Stream.STDOUT, ev.output.data[:200]
            digest.update(ev.output.data)
            size += len(ev.output.data)
            newlines += ev.output.data.count(b"\n")
    final = await client.get(task.id)
    assert states[-1] == SUCCEEDED, f"{states}: {final.reason}"
    assert size == lines * LINE_BYTES
    assert newlines == lines
    assert digest.hexdigest() == expected
    assert not final.output_truncated
    assert final.output_bytes == size
    assert final.last_seq == last_seq


@pytest.mark.asyncio
async def test_output_past_max_output_bytes_is_cut_with_a_system_marker(
        client: Client, node: Agent) -> None:
    """Output past max_output_bytes is cut exactly at the bound, then one SYSTEM marker."""
    cap = 1024 * 1024
    lines = 3 * cap // LINE_BYTES
    task = await client.submit(argv=[PY, "-c", NUMBERED, str(lines)], max_output_bytes=cap,
                               timeout=30)
    events = await all_events(client, task.id)
    outputs = [ev.output for ev in events if ev.HasField("output")]
    stdout = b"".join(o.data for o in outputs if o.stream == Stream.STDOUT)
    system = [o for o in outputs if o.stream == Stream.SYSTEM]
    assert stdout == numbered(lines)[:cap]
    assert len(system) == 1, [o.data for o in system]
    assert outputs[-1] == system[0], "output recorded after the truncation marker"
    assert b"truncated" in system[0].data
    assert str(cap).encode() in system[0].data
    final = await client.get(task.id)
    assert final.state == SUCCEEDED
    assert final.output_truncated
    assert final.output_bytes == cap
    result = await client.run(argv=[PY, "-c", NUMBERED, str(lines)], max_output_bytes=cap)
    assert result.stdout == numbered(lines)[:cap]
    assert b"truncated" in result.stderr


# --- input and terminals ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_stdin_bytes_in_the_spec_reach_the_process(client: Client, node: Agent) -> None:
    """Binary stdin given in the spec is what the process reads, byte for byte."""
    data = os.urandom(256 * 1024) + b"\x00tail"
    result = await client.run(argv=["cat"], stdin=data)
    assert result.ok, result.task.reason
    assert result.stdout == data


@pytest.mark.asyncio
async def test_interactive_stdin_through_attach(client: Client, node: Agent) -> None:
    """Input sent through attach (then EOF) reaches an interactive task's stdin."""
    task = await client.submit(argv=[PY, "-c", "print(input()[::-1])"], interactive=True,
                               timeout=30)
    out = b""
    seen: list[int] = []
    async with client.attach(task.id) as att:
        await att.send_stdin(b"olleh\n")
        await att.close_stdin()
        events = att.events()
        async with contextlib.aclosing(events):
            async for ev in events:
                if ev.HasField("state"):
                    seen.append(ev.state.state)
                elif ev.output.stream == Stream.STDOUT:
                    out += ev.output.data
    assert seen[-1] == SUCCEEDED, (seen, (await client.get(task.id)).reason)
    assert out == b"hello\n"


@pytest.mark.asyncio
async def test_attach_stdin_faster_than_the_task_reads_loses_nothing(
        client: Client, node: Agent, tmp_path: Path) -> None:
    """Stdin sent through attach faster than the task reads arrives whole (4 MiB, no drops)."""
    gate = tmp_path / "gate"
    script = (
        "import hashlib, os, sys, time\n"
        "while not os.path.exists(sys.argv[1]):\n"
        "    time.sleep(0.01)\n"
        "data = sys.stdin.buffer.read()\n"
        "print(len(data), hashlib.sha256(data).hexdigest())\n"
    )
    data = os.urandom(4 * 1024 * 1024)
    task = await client.submit(argv=[PY, "-c", script, str(gate)], interactive=True,
                               timeout=30)
    out = b""
    async with client.attach(task.id) as att:
        for at in range(0, len(data), 64 * 1024):
            await att.send_stdin(data[at:at + 64 * 1024])
        gate.touch()
        await att.close_stdin()
        events = att.events()
        async with contextlib.aclosing(events):
            async for ev in events:
                if ev.HasField("output"):
                    out += ev.output.data
    final = await client.get(task.id)
    assert final.state == SUCCEEDED, final.reason
    assert out.decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]


@pytest.mark.asyncio
async def test_pty_size_and_resize_reach_the_terminal(client: Client, node: Agent) -> None:
    """rows/cols in the spec set the terminal size; a resize through attach changes it."""
    sized = await client.run(argv=["stty", "size"], pty=True, rows=40, cols=100)
    assert sized.ok, sized.task.reason
    assert sized.stdout.split() == [b"40", b"100"]
    script = "import os; input(); s = os.get_terminal_size(0); print('size', s.lines, s.columns)"
    task = await client.submit(argv=[PY, "-c", script], pty=True, interactive=True,
                               timeout=30)
    out = b""
    async with client.attach(task.id) as att:
        await att.resize(50, 120)
        await att.send_stdin(b"go\n")
        events = att.events()
        async with contextlib.aclosing(events):
            async for ev in events:
                if ev.HasField("output"):
                    out += ev.output.data
    assert b"size 50 120" in out, out


@pytest.mark.asyncio
async def test_pty_task_runs_under_a_terminal(client: Client, node: Agent) -> None:
    """With pty=True the task's stdin is a pseudo-terminal (`tty` names /dev/pts/N)."""
    result = await client.run(argv=["tty"], pty=True)
    assert result.ok, (result.task.reason, result.stdout)
    assert result.stdout.strip().startswith(b"/dev/pts/"), result.stdout
    plain = await client.run(argv=["tty"])
    assert plain.exit_code == 1
    assert b"not a tty" in plain.stdout


@pytest.mark.asyncio
async def test_pty_tasks_start_reliably(client: Client, node: Agent) -> None:
    """Thirty PTY tasks in a row all start, succeed and print only their own output."""
    outcomes = []
    for _ in range(30):
        result = await client.run(argv=["echo", "pty ok"], pty=True)
        outcomes.append((result.task.reason, result.stdout))
    bad = [o for o in outcomes if o != ("", b"pty ok\r\n")]
    assert not bad, f"{len(bad)} of 30 PTY tasks went wrong, e.g. {bad[:3]}"


# --- ending tasks ---------------------------------------------------------------------


def marked_processes(mark: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries TREE_MARK=mark."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(TREE_MARK) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


@pytest.mark.asyncio
async def test_cancel_kills_the_whole_tree_including_setsid_grandchildren(
        client: Client, node: Agent) -> None:
    """Cancel ends a task CANCELLED with no process of its tree alive, setsid escapees too."""
    mark = uuid.uuid4().hex
    task = await client.submit(
        argv=["sh", "-c", "setsid sleep 300 & echo started; sleep 300"],
        env={TREE_MARK: mark}, timeout=50)
    tree: list[psutil.Process] = []

    async def escaped() -> bool:
        tree[:] = await asyncio.to_thread(marked_processes, mark)
        sessions = set()
        for proc in tree:
            with contextlib.suppress(ProcessLookupError):
                sessions.add(os.getsid(proc.pid))
        return len(sessions) >= 2

    states: list[int] = []
    events = client.watch(task.id)
    async with contextlib.aclosing(events):
        async for ev in events:
            if ev.HasField("state"):
                states.append(ev.state.state)
            elif b"started" in ev.output.data:
                await eventually(escaped, "the setsid grandchild to run in its own session")
                cancelled = await client.cancel(task.id, reason="test says stop")
                assert cancelled.cancel_requested or cancelled.state == CANCELLED
    final = await client.get(task.id)
    assert states[-1] == CANCELLED, (states, final.reason)
    assert final.state == CANCELLED
    assert "test says stop" in final.reason
    survivors = [p.pid for p in tree if alive(p)]
    survivors += [p.pid for p in await asyncio.to_thread(marked_processes, mark)]
    assert not survivors, f"processes of the cancelled task survive: {sorted(set(survivors))}"


@pytest.mark.asyncio
async def test_starting_a_second_node_does_not_kill_tasks_of_the_first(
        client: Client, node: Agent, hub: Hub, tmp_path: Path) -> None:
    """A node agent starting on the same machine leaves the other agent's running tasks be."""
    (first_node,) = await client.list_nodes()
    gate = tmp_path / "gate"
    task = await client.submit(argv=[PY, "-c", GATED, str(gate)], node_id=first_node.id,
                               timeout=30)
    out = b""
    events = client.watch(task.id)
    async with contextlib.aclosing(events):
        async for ev in events:
            if ev.HasField("output"):
                out += ev.output.data
                if out == b"first\n":
                    break
    async with running_node(hub, tmp_path / "n2"):
        gate.touch()
        final = await client.wait(task.id)
    assert final.state == SUCCEEDED, f"{TaskState.Name(final.state)}: {final.reason}"


@pytest.mark.asyncio
async def test_task_past_its_timeout_ends_timed_out_with_a_reason(
        client: Client, node: Agent) -> None:
    """A task still running at its timeout is killed and ends TIMED_OUT, saying why."""
    result = await client.run(argv=["sleep", "30"], timeout=1)
    assert result.state == TIMED_OUT, result.task.reason
    reason = result.task.reason.lower()
    assert "timed out" in reason or "deadline" in reason, result.task.reason


@pytest.mark.asyncio
async def test_same_idempotency_key_returns_the_same_task(
        client: Client, node: Agent, raw_channel: grpc.aio.Channel, hub: Hub) -> None:
    """A second submit with the same idempotency key returns the first task, created=False."""
    stub = tasks_pb2_grpc.TaskServiceStub(raw_channel)
    metadata = (("authorization", f"Bearer {hub.admin_token}"),)
    first = await client.submit(argv=["echo", "once"], idempotency_key="deploy-42")
    again = await stub.Submit(tasks_pb2.SubmitRequest(spec=first.spec), metadata=metadata)
    assert again.created is False
    assert again.task.id == first.id
    via_sdk = await client.submit(argv=["echo", "once"], idempotency_key="deploy-42")
    assert via_sdk.id == first.id
    other_spec = TaskSpec(shell=first.spec.shell, idempotency_key="deploy-43")
    other = await stub.Submit(tasks_pb2.SubmitRequest(spec=other_spec), metadata=metadata)
    assert other.created is True
    assert other.task.id != first.id
    assert len(await client.list_tasks()) == 2


@pytest.mark.asyncio
async def test_task_with_unknown_label_waits_with_a_reason_then_times_out(
        client: Client, node: Agent) -> None:
    """An unplaceable task is QUEUED with the label in its reason, then TIMED_OUT keeping it."""
    task = await client.submit(argv=["true"], labels={"gpu": "h100"}, timeout=5)

    async def has_reason() -> bool:
        return bool((await client.get(task.id)).reason)

    await eventually(has_reason, "the hub to say why the task waits")
    waiting = await client.get(task.id)
    assert waiting.state == QUEUED
    assert "gpu=h100" in waiting.reason, waiting.reason
    final = await client.wait(task.id)
    assert final.state == TIMED_OUT
    assert "deadline" in final.reason, final.reason
    assert "gpu=h100" in final.reason, final.reason
    assert not final.node_id


@pytest.mark.asyncio
async def test_failing_task_is_retried_per_its_policy(client: Client, node: Agent) -> None:
    """With max_attempts=2 and retry_on_failure a failing command runs twice, both recorded."""
    result = await client.run(command="echo try; exit 7", max_attempts=2,
                              retry_on_failure=True)
    task = result.task
    assert task.state == FAILED
    assert task.attempt == 2
    assert [a.attempt for a in task.attempts] == [1, 2]
    for att in task.attempts:
        assert att.state == FAILED
        assert att.has_exit_code
        assert att.exit_code == 7
    assert result.stdout == b"try\n"  # the last attempt's output only
    history = await all_events(client, task.id)
    assert {ev.attempt for ev in history if ev.HasField("output")} == {1, 2}
    assert state_events(history) == [QUEUED, ASSIGNED, RUNNING, FAILED,
                                     QUEUED, ASSIGNED, RUNNING, FAILED]


@pytest.mark.asyncio
async def test_failing_task_without_retry_on_failure_runs_once(
        client: Client, node: Agent) -> None:
    """max_attempts alone does not retry a plain failure (only LOST is retried)."""
    result = await client.run(command="exit 7", max_attempts=3)
    assert result.state == FAILED
    assert [a.attempt for a in result.task.attempts] == [1]


async def _run_messages(raw_channel: grpc.aio.Channel, hub: Hub, spec: TaskSpec, *,
                        batch: bool) -> list[tasks_pb2.RunResponse]:
    stub = tasks_pb2_grpc.TaskServiceStub(raw_channel)
    call = stub.Run(tasks_pb2.SubmitRequest(spec=spec, batch_events=batch),
                    metadata=(("authorization", f"Bearer {hub.admin_token}"),))
    return [msg async for msg in call]


@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["echo one; echo two >&2; exit 3", "echo hi"])
async def test_run_batched_and_unbatched_carry_the_same_events(
        client: Client, node: Agent, raw_channel: grpc.aio.Channel, hub: Hub,
        command: str) -> None:
    """Run with batch_events gives every event once and in order, in fewer messages:
    `submitted` with the first events, the finishing events with `finished`; without it,
    one event per message. A retried failure (two attempts) comes through whole too."""
    spec = TaskSpec(shell=ShellSpec(command=command),
                    retry=RetryPolicy(max_attempts=2, retry_on_failure=True))
    batched = await _run_messages(raw_channel, hub, spec, batch=True)
    single = await _run_messages(raw_channel, hub, spec, batch=False)

    assert batched[0].WhichOneof("kind") == "submitted"
    assert batched[0].events  # the first events ride with it
    assert batched[-1].WhichOneof("kind") == "finished"
    assert batched[-1].events  # the events that finished it ride with it
    assert all(m.WhichOneof("kind") is None for m in batched[1:-1])
    assert single[0].WhichOneof("kind") == "submitted"
    assert not single[0].events
    assert single[-1].WhichOneof("kind") == "finished"
    assert all(m.WhichOneof("kind") == "event" and not m.events for m in single[1:-1])

    def summary(events: list[TaskEvent], task: TaskEvent) -> list[tuple[int, int, str, bytes]]:
        assert [e.seq for e in events] == list(range(1, task.last_seq + 1))  # all, in order
        return [(e.attempt, e.state.state, e.WhichOneof("kind"), e.output.data)
                for e in events]

    got_batched = [e for m in batched for e in m.events]
    got_single = [m.event for m in single[1:-1]]
    assert summary(got_batched, batched[-1].finished) == summary(got_single,
                                                                 single[-1].finished)
    assert len(batched) < len(single)
    final = batched[-1].finished
    expected = FAILED if "exit 3" in command else SUCCEEDED
    assert final.state == expected
    assert [a.attempt for a in final.attempts] == ([1, 2] if expected == FAILED else [1])


@pytest.mark.asyncio
@pytest.mark.parametrize(("hold_s", "writes"), [(30.0, 3), (0.0, 4)])
async def test_a_short_tasks_start_goes_out_with_its_end(
        client: Client, hub: Hub, tmp_path: Path, hold_s: float, writes: int) -> None:
    """The node holds a task's start back (started_hold_s) for output or the end to ride
    with: a task done within the hold costs the hub one report and one write fewer
    (Task.version counts writes: submit, assignment, reports)."""
    async with running_node(hub, tmp_path / "held", started_hold_s=hold_s):
        result = await client.run(command="sleep 0.2")
    assert result.state == SUCCEEDED, result.task.reason
    assert result.task.version == writes


@pytest.mark.asyncio
async def test_output_after_the_start_is_not_held_back(
        client: Client, hub: Hub, tmp_path: Path) -> None:
    """Only a lone start waits out the hold: later output goes out as it comes (a hold past
    the test's timeout makes a held-back "two" fail it)."""
    async with running_node(hub, tmp_path / "held", started_hold_s=600.0):
        task = await client.submit(command="echo one; sleep 0.3; echo two; sleep 30")
        seen = bytearray()
        events = client.watch(task.id)
        async with contextlib.aclosing(events):
            async for ev in events:
                seen += ev.output.data
                if b"two" in seen:
                    break
        await client.cancel(task.id)
    assert seen.split() == [b"one", b"two"]


@pytest.mark.asyncio
async def test_a_quiet_tasks_start_is_reported_when_its_hold_ends(
        client: Client, hub: Hub, tmp_path: Path) -> None:
    """A task that prints nothing still shows RUNNING once the hold is over."""
    async with running_node(hub, tmp_path / "held", started_hold_s=0.2):
        quiet = await client.submit(argv=["sleep", "30"])

        async def running() -> bool:
            return (await client.get(quiet.id)).state == RUNNING

        await eventually(running, "the quiet task to be reported RUNNING")
        await client.cancel(quiet.id)
        assert (await client.wait(quiet.id)).state == CANCELLED


# --- listing ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_list_tasks_filters_by_state(client: Client, node: Agent) -> None:
    """list_tasks(states=...) returns exactly the tasks in those states."""
    ok = (await client.run(argv=["true"])).task.id
    bad = (await client.run(argv=["false"])).task.id
    waiting = (await client.submit(argv=["true"], labels={"pool": "nowhere"}, timeout=60)).id

    async def ids(*states: str) -> set[str]:
        return {t.id for t in await client.list_tasks(states=states)}

    assert await ids("succeeded") == {ok}
    assert await ids("failed") == {bad}
    assert await ids("queued") == {waiting}
    assert await ids("succeeded", "failed") == {ok, bad}
    assert await ids("running") == set()
    assert {t.id for t in await client.list_tasks()} == {ok, bad, waiting}
    await client.cancel(waiting)
    assert await ids("cancelled") == {waiting}
    assert await ids("queued") == set()


@pytest.mark.asyncio
async def test_list_nodes_shows_the_node_online_with_skills_labels_capacity(
        client: Client, node: Agent) -> None:
    """The connected node is listed ONLINE with skills shell+noop, os/arch labels, capacity."""
    nodes = await client.list_nodes()
    assert len(nodes) == 1
    n = nodes[0]
    assert n.name == "n1"
    assert n.state == NodeState.ONLINE
    assert {"shell", "noop"} <= set(n.skills)
    assert n.labels["os"] == platform.system().lower()
    assert n.labels["arch"] == platform.machine()
    assert n.capacity.cpus >= 1
    assert n.capacity.memory_mib > 0
    assert n.capacity.slots >= 1
    assert [x.id for x in await client.list_nodes(skill="noop")] == [n.id]
    assert await client.list_nodes(skill="nosuch") == []
    assert await client.list_nodes(labels={"os": "plan9"}) == []


@pytest.mark.asyncio
async def test_noop_skill_succeeds_without_a_process(client: Client, node: Agent) -> None:
    """A task of the noop skill (no shell spec) succeeds, with no output and no exit code."""
    result = await client.run(skill="noop")
    assert result.ok, result.task.reason
    assert result.exit_code is None
    assert result.stdout == b""
    assert result.stderr == b""
    assert result.task.spec.skill == "noop"

"""Fault-test harness: real `cortex hub` / `cortex node` child processes, an SDK client per
hub, and waits on hub state (watch events, bounded polls) instead of sleeps.

Tests get everything through the `fleet` fixture (this folder has no package to import
helpers from). Every process a test starts is registered with it and killed at teardown,
pass or fail; task processes are found by the fleet's marker, which every task command
must carry, and killed too, since a node killed with SIGKILL leaves them behind.

Each node runs as if on a machine of its own: in a cgroup (v2) of its own, where this host
allows it. No agent outside the test can then reach its tasks, and teardown removes what
the node leaves in cgroupfs (the task groups of a SIGKILLed agent, its per-node root).
The test that two agents on one machine leave each other's tasks alone shares one on
purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
import pytest_asyncio

from cortex.sdk import (
    TERMINAL_STATES,
    Client,
    ClientConfig,
    Node,
    NodeState,
    Task,
    TaskEvent,
    TaskState,
    Unavailable,
)
from cortex.testing import HubProcess, NodeProcess, cli_env

LABEL = "fault-node"            # join-token label naming each node of a test
POLL_S = 0.05                   # pause between two reads of hub state in `eventually`
WAIT_S = 30.0                   # bound of every wait unless a test gives its own

T = TypeVar("T")
# Joins the cgroup given as $0 (when it can), then runs the node command.
_IN_CGROUP = 'echo $$ > "$0/cgroup.procs" 2>/dev/null; exec "$@"'


@dataclass
class MachineNode(NodeProcess):
    """`cortex node` as a child process, inside `cgroup` (a directory) when one is given."""

    cgroup: Path | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cortex", "node", "--hub", self.hub, "--data-dir",
               str(self.data_dir), "--token", self.token, *self.extra]
        if self.cgroup is not None:
            cmd = ["/bin/sh", "-c", _IN_CGROUP, str(self.cgroup), *cmd]
        with open(self.data_dir / "node.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=cli_env(self.data_dir.parent))


class Log(list[TaskEvent]):
    """A task's events, with the views the fault tests compare."""

    def stdout(self, attempt: int | None = None) -> str:
        return b"".join(e.output.data for e in self if e.HasField("output")
                        and (attempt is None or e.attempt == attempt)).decode()

    def states(self) -> list[tuple[int, str]]:
        """(attempt, state name) of each state event, in log order."""
        return [(e.attempt, TaskState.Name(e.state.state)) for e in self if e.HasField("state")]

    def seqs(self) -> list[int]:
        return [e.seq for e in self]

    def assert_dense(self) -> None:
        """Sequence numbers run 1, 2, 3 ... with neither gap nor repeat."""
        assert self.seqs() == list(range(1, len(self) + 1)), f"seqs not dense:\n{self}"

    def __str__(self) -> str:
        lines = []
        for e in self:
            if e.HasField("state"):
                what = f"{TaskState.Name(e.state.state)} {e.state.reason!r}"
            else:
                what = f"output {e.output.data!r}"
            lines.append(f"  #{e.seq} attempt {e.attempt}: {what}")
        return "\n".join(lines) or "  (no events)"


@dataclass
class Fleet:
    """The hubs, nodes and clients of one test, under `root`; all ended at teardown."""

    root: Path
    marker: str = field(default_factory=lambda: f"cortex-fault-{uuid.uuid4().hex}")
    hubs: list[HubProcess] = field(default_factory=list)
    nodes: list[NodeProcess] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    machines: dict[str, Path | None] = field(default_factory=dict)

    # --- processes ---------------------------------------------------------------------

    async def start_hub(self, *extra: str, name: str = "hub") -> HubProcess:
        hub = HubProcess(self.root / name, extra=extra)
        self.hubs.append(hub)
        await asyncio.to_thread(hub.start)
        return hub

    async def restart_hub(self, hub: HubProcess) -> None:
        """Start `hub` again on its data dir and ports, once it is ready."""
        _close_pipe(hub)
        await asyncio.to_thread(hub.start)

    def client(self, hub: HubProcess) -> Client:
        ca = (hub.data_dir / "ca" / "ca.pem").read_bytes()
        client = Client(ClientConfig(address=hub.address, token=hub.token, ca_pem=ca,
                                     call_timeout=10.0, reconnect_timeout=WAIT_S))
        self.clients.append(client)
        return client

    async def start_node(self, hub: HubProcess, client: Client, name: str, *extra: str,
                         machine: str = "") -> tuple[NodeProcess, str]:
        """A node enrolled with its own join token (label fault-node=`name`), once online,
        and its id. It runs on `machine` (default: a machine of its own)."""
        token = await client.create_join_token(ttl=120, labels={LABEL: name})
        node = MachineNode(self.root / name, hub.address, token.token,
                           extra=("--name", name, *extra), cgroup=self._machine(machine or name))
        self.nodes.append(node)
        node.start()
        return node, (await self.node_online(client, name, node)).id

    async def restart_node(self, node: NodeProcess, client: Client, name: str) -> Node:
        """Start `node` again on its data dir (enrolled: no token), until it is online on a
        connection newer than its previous one."""
        before = await self.find_node(client, name)
        node.token = ""
        node.start()
        return await self.node_online(client, name, node,
                                      newer_than=before.connected_at if before else 0.0)

    async def node_online(self, client: Client, name: str, node: NodeProcess, *,
                          newer_than: float = 0.0) -> Node:
        async def probe() -> Node | None:
            found = await self.find_node(client, name)
            if found and found.state == NodeState.ONLINE and found.connected_at > newer_than:
                return found
            return None

        return await self.eventually(probe, f"node {name} online", node=node)

    def _machine(self, name: str) -> Path | None:
        if name not in self.machines:
            self.machines[name] = _new_cgroup(f"{self.marker}-{name}")
        return self.machines[name]

    def task_processes(self) -> list[psutil.Process]:
        """Live processes of this test's tasks (their command lines carry the marker)."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if (proc.info["status"] != psutil.STATUS_ZOMBIE
                    and any(self.marker in arg for arg in cmdline)):
                found.append(proc)
        return found

    @staticmethod
    def gone(proc: psutil.Process) -> bool:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    async def until_gone(self, proc: psutil.Process, what: str) -> None:
        async def probe() -> bool:
            return self.gone(proc)

        await self.eventually(probe, what)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for node in self.nodes:
            node.kill()
        for hub in self.hubs:
            hub.kill()
            _close_pipe(hub)
        for proc in self.task_processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for group in self.machines.values():
            if group is not None:
                await _remove_cgroup(group)

    # --- waiting on hub state ------------------------------------------------------------

    @staticmethod
    async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, *,
                         within: float = WAIT_S, node: NodeProcess | None = None) -> T:
        """The first truthy result of `probe`, polled every POLL_S, for at most `within` s.

        Unavailable counts as "not yet": a restarted hub is back before the client's channel
        has reconnected to it."""
        last: object = None
        try:
            async with asyncio.timeout(within):
                while True:
                    if node is not None and node.proc is not None and node.proc.poll() is not None:
                        raise AssertionError(f"{what}: the node exited ({node.proc.returncode})"
                                             f":\n{node.log()}")
                    try:
                        last = await probe()
                    except Unavailable as exc:
                        last = exc
                    else:
                        if last:
                            return last  # type: ignore[return-value]
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            log = f"\nnode log:\n{node.log()}" if node is not None else ""
            raise AssertionError(f"not within {within:g} s: {what} (last: {last!r}){log}"
                                 ) from None

    @staticmethod
    async def find_node(client: Client, name: str) -> Node | None:
        nodes = await client.list_nodes(labels={LABEL: name})
        assert len(nodes) <= 1, f"two nodes carry {LABEL}={name}: {nodes}"
        return nodes[0] if nodes else None

    @staticmethod
    async def watch_until(client: Client, task_id: str, done: Callable[[Log], bool],
                          what: str, *, within: float = WAIT_S) -> Log:
        """The task's events from seq 1 on, read live until `done(events)` holds."""
        events = Log()
        try:
            async with asyncio.timeout(within):
                stream = client.watch(task_id)
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        events.append(event)
                        if done(events):
                            return events
        except TimeoutError:
            pass
        raise AssertionError(f"not seen in the events of {task_id}: {what}\n{events}")

    async def until_output(self, client: Client, task_id: str, text: str,
                           attempt: int | None = None) -> Log:
        """The task's events up to the first where its stdout contains `text`."""
        return await self.watch_until(client, task_id, lambda log: text in log.stdout(attempt),
                                      f"stdout {text!r}")

    @staticmethod
    async def history(client: Client, task_id: str) -> Log:
        """Every stored event of the task, from seq 1, without following."""
        events = Log()
        async with asyncio.timeout(WAIT_S):
            stream = client.watch(task_id, follow=False)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    events.append(event)
        return events

    async def finished(self, client: Client, task_id: str, *, within: float = WAIT_S
                       ) -> Task:
        """The task (with its attempts) once it is in a final state, retries included."""
        async def probe() -> Task | None:
            task = await client.get(task_id)
            return task if task.state in TERMINAL_STATES else None

        return await self.eventually(probe, f"task {task_id} finished", within=within)

    @staticmethod
    def journal_row(node: NodeProcess, task_id: str, attempt: int) -> dict[str, int] | None:
        """The node journal's row of one attempt, read-only (the node may be running)."""
        path = node.data_dir / "journal.db"
        if not path.exists():
            return None
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            row = db.execute(
                "SELECT pid, finished, dropped, next_seq, acked_seq FROM task_history"
                " WHERE task_id = ? AND attempt = ?", (task_id, attempt)).fetchone()
        finally:
            db.close()
        names = ("pid", "finished", "dropped", "next_seq", "acked_seq")
        return None if row is None else dict(zip(names, row, strict=True))


def _new_cgroup(name: str) -> Path | None:
    """A new cgroup v2 beside this process's own, or None where the host does not allow it."""
    try:
        own = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::"))
        mount = next(fields[4] for fields in map(str.split, Path(
            "/proc/self/mountinfo").read_text().splitlines())
            if fields[fields.index("-") + 1] == "cgroup2")
        group = Path(mount) / own.lstrip("/") / name
        group.mkdir()
    except (OSError, StopIteration, ValueError):
        return None
    return group


async def _remove_cgroup(group: Path) -> None:
    """Kill whatever is left in `group` and remove it with its sub-groups (best effort)."""
    with contextlib.suppress(OSError):
        (group / "cgroup.kill").write_text("1")

    async def empty() -> bool:
        return "populated 0" in (group / "cgroup.events").read_text()

    with contextlib.suppress(AssertionError, OSError):
        await Fleet.eventually(empty, f"cgroup {group} empty", within=5)
    for path, _, _ in sorted(os.walk(group), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _close_pipe(hub: HubProcess) -> None:
    # The old process's stdout pipe; its reader thread has hit EOF once the process died.
    if hub.proc is not None and hub.proc.poll() is not None and hub.proc.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            hub.proc.stdout.close()


@pytest_asyncio.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """This test's processes and clients; all of them are ended afterwards, pass or fail."""
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        await fleet.close()

"""The reporting half of the node agent: every task attempt it holds (`Held`), and how
their events get out - buffered, numbered and journaled in one transaction per flush,
then sent as reports the hub acknowledges (after which the journal forgets them).

The flush runs at once when idle and at most every `flush_interval_s` when busy; a lone
`started` waits up to `started_hold_s` for output or the end to ride with (a short task
then reports once). After a reconnect, what the link never saw is read back from the
journal.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from cortex._proto.cortex.v1 import node_pb2
from cortex.core.states import State
from cortex.node.config import NodeConfig
from cortex.node.journal import Journal
from cortex.skills.base import TaskRun

__all__ = ["Held", "Reporting"]

_REPORT_BYTES = 1024 * 1024       # split reports above this


@dataclass(eq=False)
class Held:
    assign: node_pb2.Assign
    next_seq: int = 1                                  # seq of the next event to journal
    acked: int = 0                                     # newest seq the hub stored
    sent: int = 0                                      # newest seq handed to this connection
    buffer: list[node_pb2.NodeEvent] = field(default_factory=list)  # not journaled yet
    unsent: list[node_pb2.NodeEvent] = field(default_factory=list)  # journaled, not sent
    run: TaskRun | None = None
    started: bool = False
    finished: bool = False
    dropped: bool = False
    stdin: collections.deque[bytes] = field(default_factory=collections.deque)
    stdin_eof: bool = False
    stdin_written: int = 0
    stdin_pump: asyncio.Task[None] | None = None
    size: tuple[int, int] | None = None                 # the latest terminal size asked for
    cancel: tuple[State, str] | None = None
    hold_start_until: float = 0.0  # monotonic; a lone "started" waits till then to go out

    @property
    def key(self) -> tuple[str, int]:
        return (self.assign.task_id, self.assign.attempt)


class Reporting:
    """The agent's held attempts and their way out (mixed into `Agent`)."""

    _config: NodeConfig
    _journal: Journal
    _held: dict[tuple[str, int], Held]
    _dirty: asyncio.Event
    _outbox: asyncio.Queue[node_pb2.NodeMessage] | None

    def _emit(self, held: Held, event: node_pb2.NodeEvent) -> None:
        if held.dropped:
            return
        held.buffer.append(event)
        hold = self._config.started_hold_s
        if len(held.buffer) == 1 and event.WhichOneof("kind") == "started" and hold > 0:
            # Held back a little (NodeConfig.started_hold_s): what comes next - output, or
            # the end of a short task - goes out in the same report and store write.
            held.hold_start_until = time.monotonic() + hold
            asyncio.get_running_loop().call_later(hold, self._dirty.set)
            return
        self._dirty.set()

    async def _flush_loop(self) -> None:
        last = 0.0
        while True:
            await self._dirty.wait()
            # Idle: flush at once (latency). Busy: at most one flush per interval, so output
            # of many tasks and many chunks shares one journal commit and one report.
            wait = last + self._config.flush_interval_s - time.monotonic()
            await asyncio.sleep(max(0.0, wait))
            self._dirty.clear()
            last = time.monotonic()
            self._flush()
            await self._send_pending()

    def _flush(self) -> None:
        batches = []
        now = time.monotonic()
        for held in list(self._held.values()):
            if not held.buffer or (now < held.hold_start_until and len(held.buffer) == 1
                                   and held.buffer[0].HasField("started")):
                continue  # nothing, or a start still held back (another task woke us)
            events, held.buffer = held.buffer, []
            finished = any(e.WhichOneof("kind") == "finished" for e in events)
            batches.append((held.assign.task_id, held.assign.attempt, held.next_seq, events,
                            finished))
            held.next_seq += len(events)
            if self._outbox is not None:
                held.unsent.extend(events)
        if batches:
            self._journal.append(batches)

    async def _send_pending(self) -> None:
        outbox = self._outbox
        if outbox is None:
            return
        for held in list(self._held.values()):
            if held.sent >= held.next_seq - 1:
                continue
            if not held.unsent or held.sent + len(held.unsent) < held.next_seq - 1:
                # After a reconnect (or restart) the journal has what this link never saw.
                held.unsent = self._journal.unacked(held.assign.task_id, held.assign.attempt,
                                                    held.sent)
            while held.unsent and self._outbox is outbox:
                chunk = _take(held.unsent, _REPORT_BYTES)
                await outbox.put(node_pb2.NodeMessage(report=node_pb2.TaskReport(
                    task_id=held.assign.task_id, attempt=held.assign.attempt,
                    first_seq=held.sent + 1, events=chunk)))
                held.sent += len(chunk)


def _take(events: list[node_pb2.NodeEvent], limit: int) -> list[node_pb2.NodeEvent]:
    """Remove and return a prefix of `events` of about `limit` bytes (at least one)."""
    size, n = 0, 0
    while n < len(events) and (size < limit or n == 0):
        size += events[n].ByteSize()
        n += 1
    chunk = events[:n]
    del events[:n]
    return chunk

"""Following tasks: watch their events, wait for them to finish, feed them stdin.

A mixin of `TaskManager` (the moves live there); split out to keep each module readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2
from cortex.core import states
from cortex.core.states import State
from cortex.errors import Conflict, InvalidArgument, Unavailable
from cortex.hub._entry import Entry, first_of
from cortex.hub.registry import NodeConn, Registry
from cortex.store.base import Store

__all__ = ["Following"]

_EVENT_PAGE = 2000
_MAX_WAIT = 10_000
_STDIN_WINDOW = 1024 * 1024   # unacknowledged stdin bytes in flight per task
_POLL_S = 2.0                 # with several hubs: re-read the store at least this often
_POLL_IDS = 200               # ... for at most this many waited-for tasks per round


class Following:
    """Reads of the task manager's state for watchers, waiters and attached clients."""

    _active: dict[str, Entry]
    _registry: Registry
    _store: Store
    _done_waiters: dict[str, list[asyncio.Queue[pb.Task]]]
    _monotonic: Callable[[], float]
    # cancel_on_disconnect tasks that nobody follows, and since when (monotonic).
    _orphans: dict[str, float]

    clustered: bool

    if TYPE_CHECKING:
        async def get(self, tenant: str, task_id: str, *,
                      with_attempts: bool = False) -> pb.Task: ...
        def feed_event(self, task_id: str) -> asyncio.Event: ...
        async def relay_stdin(self, tenant: str, task_id: str,
                              msg: node_pb2.HubMessage) -> None: ...

    async def wait_tasks(self, tenant: str, task_ids: list[str]
                         ) -> AsyncIterator[list[pb.Task]]:
        """Batches of the given tasks as they finish; every id exactly once."""
        if not 1 <= len(task_ids) <= _MAX_WAIT:
            raise InvalidArgument(f"task_ids: give between 1 and {_MAX_WAIT} ids")
        pending = set(task_ids)
        for task_id in pending:
            entry = self._active.get(task_id)
            if entry is None or entry.tenant != tenant:
                await self.get(tenant, task_id)  # NotFound for unknown ids / other tenants
        done: asyncio.Queue[pb.Task] = asyncio.Queue()
        for task_id in pending:
            self._done_waiters.setdefault(task_id, []).append(done)
        try:
            ready = await self._finished_elsewhere(tenant, pending)
            while True:
                for task in ready:
                    pending.discard(task.id)
                if ready:
                    yield ready
                if not pending:
                    return
                try:
                    ready = [await asyncio.wait_for(done.get(), _POLL_S)] if self.clustered \
                        else [await done.get()]
                except TimeoutError:  # an announcement lost by the feed: read the store
                    ready = await self._finished_elsewhere(tenant, pending)
                    continue
                while not done.empty():
                    ready.append(done.get_nowait())
                ready = [t for t in ready if t.id in pending and t.tenant == tenant]
        finally:
            for task_id in task_ids:
                queues = self._done_waiters.get(task_id)
                if queues is not None and done in queues:
                    queues.remove(done)
                    if not queues:
                        del self._done_waiters[task_id]

    async def _finished_elsewhere(self, tenant: str, pending: set[str]) -> list[pb.Task]:
        """The pending tasks this hub does not hold that are finished (read from the store;
        on one hub every unfinished task is held)."""
        out = []
        ids = list(pending)
        if self.clustered and len(ids) > _POLL_IDS:  # a safety net: a sample per round
            ids = random.sample(ids, _POLL_IDS)
        for task_id in ids:
            if task_id not in self._active:
                task = await self.get(tenant, task_id)
                if states.is_terminal(State(task.state)) or not self.clustered:
                    out.append(task)
        return out

    async def watch(
        self, tenant: str, task_id: str, *, after_seq: int, follow: bool
    ) -> AsyncGenerator[pb.TaskEvent, None]:
        """History after `after_seq`, then live events until the task is finished."""
        batches = self.watch_batches(tenant, task_id, after_seq=after_seq, follow=follow)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for ev in batch:
                    yield ev

    async def watch_batches(
        self, tenant: str, task_id: str, *, after_seq: int, follow: bool
    ) -> AsyncGenerator[list[pb.TaskEvent], None]:
        """`watch`, in batches: each holds every event there was when it was taken (never
        empty).

        A task active on this hub is followed through its entry (which outlives the task's
        end, so the last events and the end are seen without a store read); a finished one
        is read from the store.
        """
        entry = self._active.get(task_id)
        if entry is None or entry.tenant != tenant or self.clustered:
            # With several hubs a task's events are written by whichever hub holds it:
            # read them from the store, woken by the change feed.
            await self.get(tenant, task_id)  # NotFound for unknown ids and other tenants
            entry = None
        if not follow or entry is None:
            async for batch in self._follow(tenant, task_id, entry, after_seq, follow):
                yield batch
            return
        # A follower keeps a cancel_on_disconnect task alive; the last one leaving starts
        # the grace after which the reaper cancels it.
        entry.followers += 1
        self._orphans.pop(task_id, None)
        try:
            async for batch in self._follow(tenant, task_id, entry, after_seq, follow):
                yield batch
        finally:
            entry.followers -= 1
            if (entry.followers == 0 and entry.task.spec.cancel_on_disconnect
                    and task_id in self._active):
                self._orphans[task_id] = self._monotonic()

    async def _follow(self, tenant: str, task_id: str, entry: Entry | None, after_seq: int,
                      follow: bool) -> AsyncIterator[list[pb.TaskEvent]]:
        while True:
            changed = entry.changed if entry is not None else None
            fed = self.feed_event(task_id) if self.clustered else None
            events = entry.events_after(after_seq) if entry is not None else None
            if events is None:
                events = await self._store.read_events(
                    tenant, task_id, after_seq=after_seq, limit=_EVENT_PAGE)
            if events:
                yield list(events)
                after_seq = events[-1].seq
                if len(events) >= _EVENT_PAGE:
                    continue
            if not follow:
                return
            if entry is None:
                task = await self.get(tenant, task_id)
                if states.is_terminal(State(task.state)) and task.last_seq <= after_seq:
                    return
                if fed is not None:
                    # Woken by the task's next write on any hub; a slow poll covers an
                    # announcement the feed lost.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(fed.wait(), _POLL_S)
                    continue
                entry = self._active.get(task_id)  # e.g. still queued after a hub restart
                if entry is None:
                    raise Unavailable(f"task {task_id} is not followed by this hub; retry")
            elif entry.task.last_seq <= after_seq:
                if states.is_terminal(State(entry.task.state)):
                    return
                if changed is not None:  # always, with an entry: captured before the read
                    await changed.wait()

    async def stdin(self, tenant: str, task_id: str, msg: node_pb2.HubMessage, *,
                    relayed: bool = False) -> None:
        """Forward stdin/resize to the node running the task, once it has one, keeping at
        most a window of unacknowledged stdin in flight (backpressure to the client).
        With several hubs, input for a task another hub holds is relayed to it; a relayed
        input (`relayed`) for a task this hub does not hold is not this hub's to deliver."""
        while True:
            entry = self._active.get(task_id)
            if entry is None or entry.tenant != tenant:
                if relayed:
                    return
                if self.clustered:
                    await self.relay_stdin(tenant, task_id, msg)
                    return
                raise Conflict(f"task {task_id} is not running; stdin cannot be delivered")
            conn = self._registry.get(entry.task.node_id)
            # Not before the node has the Assign (a woken waiter can run before the
            # dispatcher sends it): it would drop input for a task it does not know.
            if conn is not None and (entry.task.state == pb.RUNNING or (
                    entry.task.state == pb.ASSIGNED
                    and entry.sent_attempt == entry.task.attempt)):
                size = len(msg.stdin.data) if msg.WhichOneof("kind") == "stdin" else 0
                if entry.stdin_sent - entry.stdin_acked + size <= _STDIN_WINDOW or (
                        entry.stdin_sent == entry.stdin_acked):
                    which = msg.WhichOneof("kind")
                    getattr(msg, str(which)).task_id = task_id
                    getattr(msg, str(which)).attempt = entry.task.attempt
                    entry.stdin_sent += size
                    conn.send(msg)
                    return
                entry.stdin_room.clear()
                room = entry.stdin_room.wait()
                changed = entry.changed.wait()
                await first_of(room, changed)
                continue
            await entry.changed.wait()

    def on_stdin_ack(self, conn: NodeConn, ack: node_pb2.StdinAck) -> None:
        entry = self._active.get(ack.task_id)
        if (entry is not None and entry.task.node_id == conn.node_id
                and entry.task.attempt == ack.attempt and ack.bytes > entry.stdin_acked):
            entry.stdin_acked = ack.bytes
            entry.stdin_room.set()

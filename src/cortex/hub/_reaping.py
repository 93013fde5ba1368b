"""Reaping in the task manager: tasks of nodes gone silent become `lost`, tasks past their
deadline are stopped, and `cancel_on_disconnect` tasks nobody follows any more are
cancelled. A mixin of `TaskManager`, split out to keep each module readable.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.states import Event
from cortex.errors import Conflict
from cortex.hub._entry import Entry
from cortex.hub.config import HubConfig
from cortex.hub.registry import NodeConn, Registry
from cortex.store.base import Store

__all__ = ["Reaping"]

log = logging.getLogger("cortex.hub")


class Reaping:
    _active: dict[str, Entry]
    _registry: Registry
    _store: Store
    _config: HubConfig
    _clock: Callable[[], float]
    _monotonic: Callable[[], float]
    _deadlines: list[tuple[float, str]]
    _orphans: dict[str, float]

    if TYPE_CHECKING:
        async def cancel(self, tenant: str, task_id: str, reason: str) -> pb.Task: ...
        async def _move(self, entry: Entry, event: Event, *, reason: str = "",
                        node_id: str = "") -> None: ...
        def _send_cancel(self, entry: Entry, reason: str, state: int) -> None: ...
        def _why_queued(self, entry: Entry) -> str: ...
        def wake(self) -> None: ...
        async def node_left(self, conn: NodeConn) -> None: ...
        async def fail_over_node(self, tenant: str, node_id: str, reason: str) -> int: ...
        async def _refresh_locked(self, entry: Entry, task: pb.Task | None = None
                                  ) -> None: ...

    async def reap(self) -> None:
        """One pass: lose tasks of nodes gone past the bound, time out past deadlines."""
        mono = self._monotonic()
        for conn in self._registry.all():
            if not conn.applying and mono - conn.heard_at >= self._config.lost_after_s:
                # Connected but silent (a frozen host, a half-open link): count it gone
                # from when it was last heard, and hang up on it.
                log.warning("node %s silent for %.0f s; disconnecting it", conn.node_id,
                            mono - conn.heard_at)
                self._registry.detach(conn, now=conn.heard_at)
                await self.node_left(conn)
                conn.close()
                conn.node.state = pb.OFFLINE
                await self._store.upsert_node(conn.tenant, conn.node)
        gone = {n for n, t in self._registry.gone_since.items()
                if mono - t >= self._config.lost_after_s}
        if gone:
            for entry in list(self._active.values()):
                if entry.task.node_id in gone and entry.task.state in (pb.ASSIGNED, pb.RUNNING):
                    async with entry.lock:
                        if entry.task.node_id in gone and entry.task.state in (
                                pb.ASSIGNED, pb.RUNNING):
                            await self._lose(entry, "the node went silent past "
                                             f"{self._config.lost_after_s:g} s")
            for node_id in gone:
                self._registry.gone_since.pop(node_id, None)
        await self._expire_deadlines()
        await self._cancel_orphans(mono)

    async def _cancel_orphans(self, mono: float) -> None:
        if self._store.shared:
            return  # followers may be on any hub: not enforced with several (documented)
        grace = self._config.disconnect_grace_s
        for task_id, since in list(self._orphans.items()):
            entry = self._active.get(task_id)
            if entry is None or entry.followers:
                self._orphans.pop(task_id, None)
            elif mono - since >= grace:
                self._orphans.pop(task_id, None)
                log.info("task %s: its client went away; cancelling it", task_id)
                with contextlib.suppress(Conflict):  # it finished meanwhile
                    await self.cancel(entry.tenant, task_id, (
                        f"the client went away: nobody followed the task for {grace:g} s "
                        f"(cancel_on_disconnect)"))

    async def _expire_deadlines(self) -> None:
        now = self._clock()
        grace = self._config.timeout_grace_s
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, task_id = heapq.heappop(self._deadlines)
            entry = self._active.get(task_id)
            if entry is None or deadline not in (entry.task.deadline, entry.kill_deadline):
                continue
            async with entry.lock:
                try:
                    await self._expire(entry, deadline, grace)
                except Conflict:
                    if not self._store.shared:
                        raise
                    await self._refresh_locked(entry)  # another hub moved it first

    async def _expire(self, entry: Entry, deadline: float, grace: float) -> None:
        """Stop one task past its deadline (caller holds its lock)."""
        task = entry.task
        if task.state == pb.QUEUED:
            why = f": {task.reason or self._why_queued(entry)}"
            await self._move(entry, Event.TIME_OUT, reason=f"deadline passed while queued{why}")
        elif not entry.kill_deadline:
            entry.kill_deadline = deadline + grace
            self._send_cancel(entry, "deadline passed", pb.TIMED_OUT)
            heapq.heappush(self._deadlines, (entry.kill_deadline, task.id))
        else:
            await self._move(entry, Event.TIME_OUT,
                             reason="deadline passed and the node did not confirm the kill")

    async def _lose(self, entry: Entry, reason: str) -> None:
        conn = self._registry.get(entry.task.node_id)
        if conn is not None:
            conn.running.discard((entry.task.id, entry.task.attempt))
        if entry.task.cancel_requested:
            await self._move(entry, Event.CANCEL, reason=f"{reason} while cancelling")
        else:
            await self._move(entry, Event.LOSE, reason=reason)

    async def lose_node_tasks(self, tenant: str, node_id: str, reason: str) -> int:
        """Fail over every assigned or running task of a node at once (it was revoked):
        each becomes `lost` and is retried per its policy. How many were lost."""
        if self._store.shared:  # held by whichever hub it was connected to
            return await self.fail_over_node(tenant, node_id, reason)
        lost = 0
        for entry in list(self._active.values()):
            task = entry.task
            if task.tenant != tenant or task.node_id != node_id:
                continue
            async with entry.lock:
                if entry.task.node_id == node_id and entry.task.state in (pb.ASSIGNED,
                                                                          pb.RUNNING):
                    await self._lose(entry, reason)
                    lost += 1
        self._registry.gone_since.pop(node_id, None)
        self.wake()
        return lost

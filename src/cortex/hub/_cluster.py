"""Several hubs on one store: the task manager's memory as a cache of what every hub wrote.

A mixin of `TaskManager`; with a single-hub store (SQLite) none of this runs. Postgres is
the only source of truth (docs/architecture.md, "Scale-out"):

- every hub keeps every QUEUED task in its queue and places them on ITS nodes only; the
  ASSIGN write is a claim (`Store.claim_task`): of two hubs the loser gets Conflict,
  re-reads the task and drops it;
- ASSIGNED/RUNNING tasks are held only by the hub holding their node's lease: it adopts
  them from the store when the node connects, and forgets them when the node leaves;
- the change feed (a NOTIFY per task write) tells every hub what the others wrote: it
  refreshes what it holds, queues what was (re)queued, drops what moved elsewhere, and
  wakes watchers and waiters of tasks running anywhere. Every feed (re)connect and a slow
  periodic sweep resync from the store, since announcements can be lost;
- a node lease that expires (its hub died and the node never came back) is taken over by
  any hub, which fails the node's tasks over (`lost`, retried per policy), as one hub does
  after `lost_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import DecodeError

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2
from cortex.core import states
from cortex.core.quota import Quota
from cortex.core.states import Event, State
from cortex.errors import Conflict, CortexError, Unavailable
from cortex.hub._entry import Entry, copy_task
from cortex.hub._fair import Ledger, demand_of, holds
from cortex.hub.config import HubConfig
from cortex.hub.registry import NodeConn, Registry
from cortex.store.base import Store, TaskChange

__all__ = ["Clustering"]

log = logging.getLogger("cortex.hub.cluster")
_T = TypeVar("_T")
_HELD = (pb.ASSIGNED, pb.RUNNING)
_RELAY_POLL_S = 2.0         # relayed input: re-read a queued task at least this often
_RELAY_WAIT_S = 60.0        # ... and the holder waits at most this for the node to have it
_INPUT_CHUNK = 4096         # stdin bytes per relayed message (NOTIFY payloads < 8000 B)
_SWEEP_S = 30.0             # the resync safety net's period
_CAS_TRIES = 20             # writes retried after re-reading a task another hub moved


class Clustering:
    _active: dict[str, Entry]
    _queued: dict[str, Entry]
    _registry: Registry
    _store: Store
    _config: HubConfig
    _done_waiters: dict[str, list[asyncio.Queue[pb.Task]]]
    _orphans: dict[str, float]
    _shared: dict[tuple[str, str], frozenset[str]]
    ledger: Ledger

    if TYPE_CHECKING:
        def _track(self, entry: Entry) -> None: ...
        def _enqueue(self, entry: Entry, *, wake: bool = True) -> None: ...
        def _send_cancel(self, entry: Entry, reason: str, state: int) -> None: ...
        def share_pool(self, owner: str, pool: str, tenants: list[str] | tuple[str, ...]
                       ) -> None: ...
        def wake(self) -> None: ...
        async def stdin(self, tenant: str, task_id: str, msg: node_pb2.HubMessage, *,
                        relayed: bool = False) -> None: ...
        async def _move(self, entry: Entry, event: Event, *, reason: str = "",
                        node_id: str = "") -> None: ...
        async def _save(self, entry: Entry, new: pb.Task, events: list[pb.TaskEvent], *,
                        attempt: pb.Attempt | None = None, claim: bool = False) -> None: ...
        async def _lose(self, entry: Entry, reason: str) -> None: ...
        async def get(self, tenant: str, task_id: str, *,
                      with_attempts: bool = False) -> pb.Task: ...

    def _init_cluster(self) -> None:
        self.clustered = self._store.shared
        # Per task id: set (and replaced) on every write announced, for store watchers.
        self._feed_events: dict[str, asyncio.Event] = {}
        self._feed_jobs: set[asyncio.Task[None]] = set()
        self.instance = ""          # this process, in the hubs table
        self._input_locks: dict[str, asyncio.Lock] = {}   # relayed input, per task
        # This hub's task writes in flight (id -> the version written), and the news of
        # that version heard meanwhile: its own write's, unless the write fails.
        self._writing: dict[str, int] = {}
        self._held_back: dict[str, TaskChange] = {}

    # -- watchers of tasks held anywhere ---------------------------------------------
    def feed_event(self, task_id: str) -> asyncio.Event:
        """Set at the task's next write by any hub (capture it before reading)."""
        ev = self._feed_events.get(task_id)
        if ev is None:
            ev = self._feed_events[task_id] = asyncio.Event()
        return ev

    def _wake_watchers(self, task_id: str) -> None:
        ev = self._feed_events.pop(task_id, None)
        if ev is not None:
            ev.set()

    # -- the change feed --------------------------------------------------------------
    def on_change(self, change: TaskChange) -> None:
        """One announced task write (possibly this hub's own). Cheap when nothing to do."""
        self._wake_watchers(change.task_id)
        if self._writing.get(change.task_id) == change.version:
            # Most likely this hub's own write, heard before its reply: the writer
            # applies it (on failure, it was another hub's and is applied then).
            self._held_back[change.task_id] = change
            return
        entry = self._active.get(change.task_id)
        if entry is not None:
            if entry.task.version >= change.version:
                return  # our own write, or older news
            if (entry.task.state == pb.QUEUED and change.state in _HELD
                    and not self._local(change.tenant, change.node_id)):
                # Claimed by another hub for its node: drop our copy, no read back.
                self._spawn(self._drop_claimed(entry, change.version))
                return
        elif change.state == pb.QUEUED or (change.state in _HELD
                                           and self._local(change.tenant, change.node_id)):
            pass  # a task to adopt
        elif states.is_terminal(State(change.state)) and change.task_id in self._done_waiters:
            pass  # a waiter here wants it
        else:
            return
        self._spawn(self._apply_change(change))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        job = asyncio.ensure_future(work)
        self._feed_jobs.add(job)
        job.add_done_callback(self._feed_jobs.discard)

    async def _drop_claimed(self, entry: Entry, version: int) -> None:
        """Forget a queued task another hub's node now holds (as of `version`)."""
        async with entry.lock:
            if (self._active.get(entry.task.id) is entry and entry.task.state == pb.QUEUED
                    and entry.task.version < version):
                self._forget(entry, finished=False)
                changed, entry.changed = entry.changed, asyncio.Event()
                changed.set()

    async def own_write(self, task_id: str, version: int, write: Awaitable[_T]) -> _T:
        """Await this hub's write of `version` of the task: news of that version heard
        meanwhile is its own (the caller applies the result before its next await), unless
        the write fails: it was then another hub's, and is applied now."""
        if not self.clustered:
            return await write
        self._writing[task_id] = version
        ok = False
        try:
            result = await write
            ok = True
            return result
        finally:
            if self._writing.get(task_id) == version:
                del self._writing[task_id]
                held = self._held_back.pop(task_id, None)
                if held is not None and not ok:
                    self.on_change(held)

    async def _apply_change(self, change: TaskChange) -> None:
        try:
            if change.body:  # a queued task, sent along: no read back
                task: pb.Task | None = pb.Task.FromString(change.body)
            else:
                task = await self._store.get_task(change.tenant, change.task_id)
            if task is not None:
                await self._absorb(task)
        except (CortexError, DecodeError) as exc:  # the next resync catches up
            log.warning("could not apply the change of task %s: %s", change.task_id, exc)

    async def _absorb(self, task: pb.Task) -> None:
        """Bring memory in line with `task` as stored (newer or not)."""
        entry = self._active.get(task.id)
        if entry is not None:
            async with entry.lock:
                await self._refresh_locked(entry, task)
            return
        if task.state == pb.QUEUED:
            self._track(Entry(task.tenant, task))
        elif task.state in _HELD and self._local(task.tenant, task.node_id):
            await self._adopt(task)
        elif states.is_terminal(State(task.state)):
            for queue in self._done_waiters.pop(task.id, ()):
                queue.put_nowait(task)

    async def _adopt(self, task: pb.Task) -> Entry:
        """Hold an assigned/running task of a node connected here."""
        entry = Entry(task.tenant, task)
        att = await self._store.get_attempt(task.tenant, task.id, task.attempt)
        entry.acked_seq = att.acked_seq if att else 0
        current = self._active.get(task.id)
        if current is not None:  # adopted meanwhile by another path
            async with current.lock:
                await self._refresh_locked(current, task)
            return current
        self._track(entry)
        conn = self._registry.get(task.node_id)
        if conn is not None:
            conn.running.add((task.id, task.attempt))
        return entry

    async def _refresh_locked(self, entry: Entry, task: pb.Task | None = None) -> None:
        """Replace the entry's copy by the stored one if newer (caller holds the lock)."""
        if task is None:
            task = await self._store.get_task(entry.tenant, entry.task.id)
            if task is None:
                return
        old = entry.task
        if task.version <= old.version:
            return
        conn = self._registry.get(old.node_id)
        if conn is not None and (task.attempt != old.attempt or task.node_id != old.node_id
                                 or task.state not in _HELD):
            conn.running.discard((old.id, old.attempt))
        self.ledger.move(entry.tenant, task.spec, old.state, task.state)
        entry.task = task
        entry.tail.clear()          # other hubs wrote events this copy never saw
        entry.tail_bytes = 0
        if task.state in _HELD and self._local(task.tenant, task.node_id):
            att = await self._store.get_attempt(task.tenant, task.id, task.attempt)
            entry.acked_seq = att.acked_seq if att else 0
            if task.cancel_requested and not old.cancel_requested:
                self._send_cancel(entry, task.reason.removeprefix("cancel requested: "),
                                  pb.CANCELLED)
        changed, entry.changed = entry.changed, asyncio.Event()
        changed.set()
        if task.state == pb.QUEUED:
            self._enqueue(entry)
        elif states.is_terminal(State(task.state)):
            self._forget(entry, finished=True)
        elif not self._local(task.tenant, task.node_id):
            self._forget(entry, finished=False)  # another hub's node holds it now
        else:
            self._queued.pop(task.id, None)

    def _forget(self, entry: Entry, *, finished: bool) -> None:
        task_id = entry.task.id
        if self._active.get(task_id) is entry:
            del self._active[task_id]
            if holds(entry.task.state):
                self.ledger.release(entry.tenant, demand_of(entry.task.spec))
        self._queued.pop(task_id, None)
        self._orphans.pop(task_id, None)
        self._input_locks.pop(task_id, None)
        if finished:
            for queue in self._done_waiters.pop(task_id, ()):
                queue.put_nowait(entry.task)

    def _local(self, tenant: str, node_id: str) -> bool:
        """Whether the node is connected to this hub (holding its lease)."""
        conn = self._registry.get(node_id)
        return conn is not None and conn.leased

    async def resync(self) -> None:
        """Re-read every unfinished task (after the feed (re)connected, and periodically:
        announcements made while nobody listened are lost)."""
        for rec in await self._store.list_tenants_all():
            self.ledger.set_limits(rec.id, weight=rec.weight, quota=Quota.from_dict(rec.quota))
        for pool in await self._store.list_shared_pools_all():
            self.share_pool(pool.tenant, pool.name, pool.shared_with)
        seen = set()
        for task in await self._store.list_active_tasks_all_tenants():
            seen.add(task.id)
            await self._absorb(task)
        for task_id, entry in list(self._active.items()):
            if task_id not in seen:  # finished (or moved) since we read it
                async with entry.lock:
                    await self._refresh_locked(entry)
        for task_id in list(self._feed_events):
            self._wake_watchers(task_id)
        self.wake()

    # -- writes that may race another hub ----------------------------------------------
    async def cas_retry(self, entry: Entry, write: Callable[[Entry], Awaitable[None]]
                        ) -> None:
        """Run `write(entry)` (a coroutine function; caller holds no lock) under the
        entry's lock, re-reading the task and retrying when another hub moved it."""
        for _ in range(_CAS_TRIES):
            async with entry.lock:
                try:
                    await write(entry)
                    return
                except Conflict:
                    if not self.clustered:
                        raise
                    await self._refresh_locked(entry)
        raise Conflict(f"task {entry.task.id} kept changing under this write; retry")

    async def cancel_shared(self, tenant: str, task_id: str, reason: str) -> pb.Task:
        """Cancel a task whichever hub holds it: write the request (or the end, if it is
        still queued) with CAS; the holder hears of it on the feed and tells its node."""
        entry = self._active.get(task_id)
        if entry is None or entry.tenant != tenant:
            task = await self.get(tenant, task_id)
            if states.is_terminal(State(task.state)):
                raise Conflict(f"task {task_id} already finished ({State(task.state).label});"
                               " nothing to cancel")
            entry = Entry(tenant, task)   # held elsewhere: a private copy to write through

        async def write(e: Entry) -> None:
            task = e.task
            if task.state == pb.QUEUED:
                await self._move(e, Event.CANCEL, reason=reason)
            elif task.state in _HELD and not task.cancel_requested:
                new = copy_task(task)
                new.cancel_requested = True
                new.reason = f"cancel requested: {reason}"
                await self._save(e, new, [])
                if self._local(tenant, task.node_id):
                    self._send_cancel(e, reason, pb.CANCELLED)
            elif states.is_terminal(State(task.state)) and e.task.id not in self._active:
                raise Conflict(f"task {task_id} already finished ({State(task.state).label});"
                               " nothing to cancel")

        await self.cas_retry(entry, write)
        return entry.task

    # -- input for a task another hub holds ------------------------------------------
    async def relay_stdin(self, tenant: str, task_id: str, msg: node_pb2.HubMessage
                          ) -> None:
        """Input for a task this hub does not hold: once it runs (somewhere), relay it
        through the store to every hub; only the holder delivers it, in order (relayed
        input has no flow control beyond the client's own pacing)."""
        while True:
            fed = self.feed_event(task_id)
            if self._active.get(task_id) is not None:  # queued (here too) or now ours
                await self.stdin(tenant, task_id, msg)
                return
            task = await self.get(tenant, task_id)
            if states.is_terminal(State(task.state)):
                raise Conflict(f"task {task_id} is not running; stdin cannot be delivered")
            if task.state in _HELD:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fed.wait(), _RELAY_POLL_S)
        for part in _input_parts(msg):
            await self._store.publish_input(tenant, task_id, part.SerializeToString())

    def on_input(self, tenant: str, task_id: str, message: bytes) -> None:
        """Relayed input (every hub hears it): delivered if this hub holds the task."""
        if task_id not in self._active:
            return
        try:
            msg = node_pb2.HubMessage.FromString(message)
        except DecodeError:
            return
        lock = self._input_locks.setdefault(task_id, asyncio.Lock())  # keeps the order
        job = asyncio.ensure_future(self._deliver_input(lock, tenant, task_id, msg))
        self._feed_jobs.add(job)
        job.add_done_callback(self._feed_jobs.discard)

    async def _deliver_input(self, lock: asyncio.Lock, tenant: str, task_id: str,
                             msg: node_pb2.HubMessage) -> None:
        async with lock:
            try:
                await asyncio.wait_for(self.stdin(tenant, task_id, msg, relayed=True),
                                       _RELAY_WAIT_S)
            except (CortexError, TimeoutError) as exc:
                log.warning("relayed input for task %s dropped: %s", task_id, exc)

    # -- node leases --------------------------------------------------------------------
    async def adopt_node(self, conn: NodeConn) -> None:
        """A node connected here: take its lease and hold its assigned/running tasks,
        before reconciling what it holds (so its in-flight tasks continue)."""
        if not self.clustered:
            return
        await self._store.take_node_lease(conn.tenant, conn.node_id, self._config.hub_id,
                                          ttl_s=self._config.lost_after_s)
        conn.leased = True
        for task in await self._node_tasks(conn.node_id):
            await self._absorb(task)

    async def _node_tasks(self, node_id: str) -> list[pb.Task]:
        """The node's assigned/running tasks, its tenant's and those of tenants its pool
        is shared with (node ids are unique across tenants)."""
        return await self._store.node_tasks_all_tenants(node_id)

    async def node_left(self, conn: NodeConn) -> None:
        """The node's stream here ended: its lease runs out in `lost_after` unless it
        comes back (here or elsewhere); its tasks are held by whoever it reconnects to."""
        if not self.clustered or not conn.leased:
            return
        conn.leased = False
        for entry in list(self._active.values()):
            if entry.task.node_id == conn.node_id and entry.task.state in _HELD:
                self._forget(entry, finished=False)
        with contextlib.suppress(CortexError):  # the lease then expires as it is
            await asyncio.shield(self._store.release_node_lease(
                conn.tenant, conn.node_id, self._config.hub_id,
                ttl_s=self._config.lost_after_s))

    async def take_over_expired(self) -> int:
        """Fail over the tasks of nodes whose lease expired (their hub died and they
        never came back); how many tasks were lost."""
        lost = 0
        taken = await self._store.take_expired_node_leases(
            self._config.hub_id, ttl_s=self._config.lost_after_s)
        for tenant, node_id, expires_at in taken:
            if self._registry.get(node_id) is not None:
                continue  # it is connected here after all: the lease is rightly ours
            log.warning("node %s: its lease expired; failing its tasks over", node_id)
            node = await self._store.get_node(tenant, node_id)
            if node is not None and node.state in (pb.ONLINE, pb.DRAINING):
                node.state = pb.OFFLINE
                await self._store.upsert_node(tenant, node)
            lost += await self.fail_over_node(tenant, node_id, (
                f"the node went silent past {self._config.lost_after_s:g} s "
                f"(its hub is gone and it did not come back)"))
            await self._store.drop_node_lease(tenant, node_id, self._config.hub_id,
                                              expires_at)
        if lost:
            self.wake()
        return lost

    async def fail_over_node(self, tenant: str, node_id: str, reason: str) -> int:
        """Make every assigned/running task of the node `lost` (retried per policy),
        whichever hub holds it: read from the store, written with CAS. How many."""
        lost = 0
        for task in await self._node_tasks(node_id):
            entry = self._active.get(task.id)
            if entry is None:
                entry = Entry(task.tenant, task)
                self._track(entry)

            async def lose(e: Entry) -> None:
                nonlocal lost
                if e.task.node_id == node_id and e.task.state in _HELD:
                    await self._lose(e, reason)
                    lost += 1

            try:
                await self.cas_retry(entry, lose)
            except CortexError as exc:
                log.warning("could not fail over task %s: %s", task.id, exc)
            if entry.task.state in _HELD and not self._local(tenant, entry.task.node_id):
                self._forget(entry, finished=False)
        if lost:
            self.wake()
        return lost

    async def renew_leases(self) -> None:
        """Renew this hub's row and its nodes' leases; hang up on nodes whose lease
        another hub took (they reconnected there)."""
        mine = [c for c in self._registry.all() if c.leased]
        held = await self._store.renew_hub(
            self._config.hub_id, self.instance, ttl_s=self._config.lost_after_s,
            nodes=[(c.tenant, c.node_id) for c in mine])
        for conn in mine:
            if (conn.tenant, conn.node_id) not in held and conn.leased:
                log.warning("node %s: another hub took its lease; closing its stream here",
                            conn.node_id)
                await self.node_left(conn)
                conn.close()


    # -- the loops a clustered hub runs --------------------------------------------------
    async def claim_hub_id(self, instance: str) -> None:
        """Take this hub's id in the store, waiting out the lease of a previous process
        with the same id (killed, not stopped); refuse when a live hub renews it."""
        self.instance = instance
        ttl = self._config.lost_after_s
        loop = asyncio.get_running_loop()
        until = loop.time() + ttl + 2 * _renew_every(ttl)
        while not await self._store.claim_hub_id(self._config.hub_id, instance, ttl_s=ttl):
            if loop.time() > until:
                raise Unavailable(
                    f"hub id {self._config.hub_id!r} is held by another live hub on this "
                    f"store: give every hub its own --hub-id")
            log.info("hub id %s: waiting for the previous holder's lease to run out",
                     self._config.hub_id)
            await asyncio.sleep(1.0)

    def cluster_loops(self) -> list[Coroutine[Any, Any, None]]:
        """The background loops of a hub sharing its store (none on a single-hub store)."""
        feed = self._store.change_feed()
        if not self.clustered or feed is None:
            return []
        return [feed.run(self.on_change, self.resync, self.on_input), self._lease_loop(),
                self._sweep_loop()]

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(_renew_every(self._config.lost_after_s))
            try:
                await self.renew_leases()
                await self.take_over_expired()
            except Exception:  # a failed pass must not stop renewing; the next one retries
                log.exception("node lease pass failed")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            try:
                await self.resync()
            except Exception:  # the safety net must not stop; the next sweep retries
                log.exception("resync sweep failed")


def _input_parts(msg: node_pb2.HubMessage) -> list[node_pb2.HubMessage]:
    """`msg` split so that each part's stdin fits one relayed message (eof on the last)."""
    if msg.WhichOneof("kind") != "stdin" or len(msg.stdin.data) <= _INPUT_CHUNK:
        return [msg]
    data, eof = msg.stdin.data, msg.stdin.eof
    chunks = [data[i:i + _INPUT_CHUNK] for i in range(0, len(data), _INPUT_CHUNK)]
    return [node_pb2.HubMessage(stdin=node_pb2.Stdin(
        data=c, eof=eof and i == len(chunks) - 1)) for i, c in enumerate(chunks)]


def _renew_every(ttl: float) -> float:
    return max(0.2, ttl / 4)

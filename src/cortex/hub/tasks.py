"""The task manager: every task move goes through here, is persisted, then made visible.

Active tasks live in memory (the latest committed copy plus a lock serialising moves on
each); the store is written through on every transition with optimistic concurrency.
Watchers read history from the store and are woken by the in-memory notifier.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import node_pb2
from cortex.core import placement, states
from cortex.core.quota import Quota, Usage
from cortex.core.states import Event, State
from cortex.errors import Conflict, CortexError, InvalidArgument, NotFound
from cortex.hub._capacity import Capacity
from cortex.hub._cluster import Clustering
from cortex.hub._entry import (
    Entry,
    TaskStats,
    attempt_row,
    copy_task,
    normalise,
    stale_reason,
    validate,
)
from cortex.hub._fair import FairQueue, Ledger, demand_of, holds
from cortex.hub._follow import Following
from cortex.hub._reaping import Reaping
from cortex.hub.config import HubConfig
from cortex.hub.ids import new_id
from cortex.hub.registry import NodeConn, Registry
from cortex.store.base import Store, TaskQuery

__all__ = ["TaskManager"]

log = logging.getLogger("cortex.hub.tasks")
_TRUNCATED = (
    "\n[cortex: output truncated after {} bytes (max_output_bytes); the rest was dropped]\n"
)
_GAP = ("\n[cortex: {} events of attempt {} were lost: the hub's store lost writes it had "
        "acknowledged (restored from a backup?)]\n")
_MAX_BATCH = 1000
_FINISH_STATES = frozenset(int(s) for s in states.FINISH_EVENT)


class TaskManager(Capacity, Reaping, Following, Clustering):
    def __init__(
        self, store: Store, registry: Registry, config: HubConfig,
        clock: Callable[[], float], monotonic: Callable[[], float],
    ) -> None:
        self._store = store
        self._registry = registry
        self._config = config
        self._clock = clock
        self._monotonic = monotonic
        self._active: dict[str, Entry] = {}
        self._queued: dict[str, Entry] = {}
        # Per tenant, highest priority first, then first come; tenants take turns by
        # weighted fair share. Items of tasks no longer queued are skipped when popped.
        self._queue = FairQueue()
        self.ledger = Ledger()
        # (owning tenant, pool) -> the other tenants whose tasks its nodes may run.
        self._shared: dict[tuple[str, str], frozenset[str]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self.stats = TaskStats()
        self._done_waiters: dict[str, list[asyncio.Queue[pb.Task]]] = {}
        # (tenant, session id) -> node id; a cache of the store's sessions table.
        self._sessions: dict[tuple[str, str], str] = {}
        self._orphans: dict[str, float] = {}
        self._init_cluster()

    # -- recovery ----------------------------------------------------------------------
    async def recover(self) -> None:
        """Load every unfinished task after a (re)start; their nodes will reconnect."""
        for rec in await self._store.list_tenants_all():
            self.ledger.set_limits(rec.id, weight=rec.weight, quota=Quota.from_dict(rec.quota))
        for pool in await self._store.list_shared_pools_all():
            self.share_pool(pool.tenant, pool.name, pool.shared_with)
        for task in await self._store.list_active_tasks_all_tenants():
            if self.clustered and task.state != pb.QUEUED:
                continue  # held by the hub its node connects to (node leases)
            entry = Entry(task.tenant, task)
            sid = task.spec.session_id
            if sid and (node := await self._store.session_node(task.tenant, sid)):
                self._sessions[(task.tenant, sid)] = node
            if task.state in (pb.ASSIGNED, pb.RUNNING):
                att = await self._store.get_attempt(task.tenant, task.id, task.attempt)
                entry.acked_seq = att.acked_seq if att else 0
                self._registry.gone_since.setdefault(task.node_id, self._monotonic())
            self._track(entry)
        log.info("recovered %d unfinished tasks", len(self._active))

    def _track(self, entry: Entry) -> None:
        self._active[entry.task.id] = entry
        if entry.task.spec.cancel_on_disconnect:
            # Its client has the grace to start following it (or to come back after a
            # hub restart) before it counts as gone.
            self._orphans[entry.task.id] = self._monotonic()
        if holds(entry.task.state):
            self.ledger.hold(entry.tenant, demand_of(entry.task.spec))
        if entry.task.state == pb.QUEUED:
            self._enqueue(entry)
        if entry.task.deadline:
            heapq.heappush(self._deadlines, (entry.task.deadline, entry.task.id))

    def _enqueue(self, entry: Entry, *, wake: bool = True) -> None:
        if entry.task.id not in self._queued:
            entry.queued_at = self._clock()
        self._queued[entry.task.id] = entry
        self._queue.push(entry.tenant, entry.task.spec.priority, entry.task.id)
        if wake:
            self._wake.set()

    # -- client operations -----------------------------------------------------------
    async def submit(self, tenant: str, spec: pb.TaskSpec) -> tuple[pb.Task, bool]:
        spec = normalise(spec)
        validate(spec)
        self._admit(tenant, spec)
        await self._check_pools(tenant, {spec.pool})
        return await self._submit_valid(tenant, spec)

    async def submit_many(self, tenant: str, specs: list[pb.TaskSpec]
                          ) -> list[tuple[pb.Task, bool]]:
        if not 1 <= len(specs) <= _MAX_BATCH:
            raise InvalidArgument(f"specs: give between 1 and {_MAX_BATCH} task specs")
        normal = [normalise(s) for s in specs]
        for i, spec in enumerate(normal):
            try:
                validate(spec)
                self._admit(tenant, spec)
            except InvalidArgument as exc:
                raise type(exc)(f"specs[{i}]: {exc}") from exc
        await self._check_pools(tenant, {s.pool for s in normal})
        # Concurrent inserts land in the store's same group commit.
        return list(await asyncio.gather(*(self._submit_valid(tenant, s) for s in normal)))

    async def _submit_valid(self, tenant: str, spec: pb.TaskSpec) -> tuple[pb.Task, bool]:
        now = self._clock()
        timeout = spec.timeout_s or self._config.default_timeout_s
        task = pb.Task(
            id=new_id("t"), tenant=tenant, spec=spec, state=pb.QUEUED, attempt=1,
            created_at=now, deadline=now + timeout, version=1, last_seq=1,
        )
        event = pb.TaskEvent(task_id=task.id, seq=1, attempt=1, time=now,
                             state=pb.StateChange(state=pb.QUEUED))
        stored, created = await self.own_write(
            task.id, task.version, self._store.insert_task(tenant, task, [event]))
        if created and stored.id not in self._active:  # (the change feed may be first)
            entry = Entry(tenant, stored)
            entry.remember([event])
            self._track(entry)
        return stored, created

    async def get(self, tenant: str, task_id: str, *, with_attempts: bool = False) -> pb.Task:
        task = await self._store.get_task(tenant, task_id, with_attempts=with_attempts)
        if task is None:
            raise NotFound(f"no task {task_id!r} (check the id with `cortex tasks ls`)")
        entry = self._active.get(task_id)
        if task.state == pb.QUEUED and not task.reason and entry is not None:
            task.reason = entry.why or self._why_queued(entry)  # transient: not stored
        return task

    def _why_queued(self, entry: Entry) -> str:
        """Why a queued task is not placed right now (computed, not stored)."""
        req = self._requirements(entry)
        decision = placement.place(req, self._views(self._conns_for(entry.tenant), req))
        return decision.reason or "waiting for the dispatcher"

    async def list_tasks(self, tenant: str, query: TaskQuery) -> list[pb.Task]:
        return await self._store.list_tasks(tenant, query)

    async def cancel(self, tenant: str, task_id: str, reason: str) -> pb.Task:
        if self.clustered:
            return await self.cancel_shared(tenant, task_id, reason or "cancelled by request")
        entry = self._active.get(task_id)
        if entry is None or entry.tenant != tenant:
            task = await self.get(tenant, task_id)
            raise Conflict(
                f"task {task_id} already finished ({State(task.state).label}); nothing to cancel"
            )
        reason = reason or "cancelled by request"
        async with entry.lock:
            task = entry.task
            if task.state == pb.QUEUED:
                await self._move(entry, Event.CANCEL, reason=reason)
            elif task.state in (pb.ASSIGNED, pb.RUNNING) and not task.cancel_requested:
                new = copy_task(task)
                new.cancel_requested = True
                new.reason = f"cancel requested: {reason}"
                await self._save(entry, new, [])
                self._send_cancel(entry, reason, pb.CANCELLED)
            return entry.task

    # -- dispatch ----------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run_dispatcher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch_pass()
            except Exception:  # a failed pass must not stop dispatching; tasks stay queued
                log.exception("dispatch pass failed; retrying on the next wake")
                await asyncio.sleep(0.1)
                self._wake.set()

    async def _dispatch_pass(self) -> None:
        """Place queued tasks, tenants taking turns by weighted fair share and each
        tenant's best first, until no node has a free slot."""
        free = {c.node_id for c in self._registry.all() if len(c.running) < c.slots}
        deferred: list[tuple[str, tuple[int, int, str]]] = []
        assigned: list[asyncio.Task[None]] = []
        usage = dict(self.ledger.usage)     # this pass's reservations count at once
        skip: set[str] = set()              # tenants that can place nothing more this pass
        while free:
            nxt = self._queue.pop_next(usage, self.ledger.weights, skip)
            if nxt is None:
                break
            tenant, item = nxt
            entry = self._queued.get(item[2])
            if entry is None:
                continue  # no longer queued (cancelled, timed out, or an older heap item)
            deferred.append((tenant, item))
            conns = self._conns_for(tenant)
            if not any(c.node_id in free for c in conns):
                skip.add(tenant)  # that tenant's nodes are full; a finish wakes us
                continue
            if await self._over_quota(entry, usage.get(tenant, Usage()), skip):
                continue
            conn = await self._place(entry, conns)
            if conn is None:
                continue
            deferred.pop()
            # Reserve the slot and the quota now so the rest of this pass sees them taken.
            conn.running.add((entry.task.id, entry.task.attempt))
            conn.new_sessions += self._opens_session(entry)
            usage[tenant] = usage.get(tenant, Usage()).plus(demand_of(entry.task.spec))
            if len(conn.running) >= conn.slots:
                free.discard(conn.node_id)
            del self._queued[entry.task.id]
            assigned.append(asyncio.ensure_future(self._assign(entry, conn)))
        for tenant, item in deferred:
            self._queue.push_back(tenant, item)
        if assigned:
            await asyncio.gather(*assigned)

    async def _assign(self, entry: Entry, conn: NodeConn) -> None:
        async with entry.lock:
            if entry.task.state != pb.QUEUED:
                conn.running.discard((entry.task.id, entry.task.attempt))
                return
            try:
                if await self._pin_session(entry, conn.node_id) != conn.node_id:
                    raise Conflict("the session was pinned to another node meanwhile")
                await self._move(entry, Event.ASSIGN, node_id=conn.node_id, reason="")
                entry.why = ""
            except CortexError as exc:  # stays queued; a later pass tries again
                conn.running.discard((entry.task.id, entry.task.attempt))
                if self.clustered and isinstance(exc, Conflict):
                    await self._refresh_locked(entry)  # another hub claimed or moved it
                    if entry.task.state != pb.QUEUED:
                        return
                log.warning("could not assign %s to %s: %s", entry.task.id, conn.node_id, exc)
                self._enqueue(entry, wake=False)
                # Not at once: a failing store would otherwise make this a hot loop.
                asyncio.get_running_loop().call_later(0.5, self._wake.set)
                return
            entry.acked_seq = 0
            entry.stdin_sent = entry.stdin_acked = 0
            conn.send(self._assign_msg(entry))
            entry.sent_attempt = entry.task.attempt

    def _assign_msg(self, entry: Entry) -> node_pb2.HubMessage:
        task = entry.task
        remaining = max(0.0, task.deadline - self._clock()) if task.deadline else 0.0
        return node_pb2.HubMessage(assign=node_pb2.Assign(
            task_id=task.id, attempt=task.attempt, spec=task.spec, deadline=task.deadline,
            tenant=entry.tenant, remaining_s=remaining, queued_at=task.created_at,
        ))

    async def _set_reason(self, entry: Entry, reason: str) -> None:
        async with entry.lock:
            # Several hubs each see only their nodes: their reasons would overwrite each
            # other's back and forth, so each keeps its own in memory (what `get` says).
            if self.clustered:
                entry.why = reason
                return
            if entry.task.state != pb.QUEUED:
                return
            new = copy_task(entry.task)
            new.reason = reason
            await self._save(entry, new, [])

    # -- node side -----------------------------------------------------------------------
    def held_status(self, conn: NodeConn, held: list[node_pb2.HeldTask]
                    ) -> list[node_pb2.HeldTaskStatus]:
        """Reconcile what a (re)connecting node holds with what the hub expects of it."""
        out = []
        for h in held:
            entry = self._active.get(h.task_id)
            ok = (entry is not None and entry.task.attempt == h.attempt
                  and entry.task.node_id == conn.node_id and self.serves(conn, entry.tenant)
                  and entry.task.state in (pb.ASSIGNED, pb.RUNNING))
            if ok and entry is not None:
                conn.running.add((h.task_id, h.attempt))
                out.append(node_pb2.HeldTaskStatus(
                    task_id=h.task_id, attempt=h.attempt, acked_seq=entry.acked_seq, keep=True))
            else:
                out.append(node_pb2.HeldTaskStatus(
                    task_id=h.task_id, attempt=h.attempt, keep=False,
                    reason=stale_reason(entry, h.attempt)))
        return out

    async def after_welcome(self, conn: NodeConn, held: list[node_pb2.HeldTask]) -> None:
        """Resend lost assignments, pass pending cancels, and fail over vanished tasks."""
        held_keys = {(h.task_id, h.attempt) for h in held}
        for entry in list(self._active.values()):
            task = entry.task
            if task.node_id == conn.node_id:
                # stdin in flight on the old stream is gone; do not count it against the window
                entry.stdin_sent = entry.stdin_acked
                entry.stdin_room.set()
            if task.node_id != conn.node_id or task.state not in (pb.ASSIGNED, pb.RUNNING):
                continue
            key = (task.id, task.attempt)
            if key in held_keys:
                entry.sent_attempt = task.attempt
                if task.cancel_requested:
                    self._send_cancel(entry, task.reason, pb.CANCELLED)
            elif task.state == pb.ASSIGNED:
                conn.running.add(key)
                conn.send(self._assign_msg(entry))
                entry.sent_attempt = task.attempt
            else:
                async with entry.lock:
                    if entry.task.state == pb.RUNNING and entry.task.node_id == conn.node_id:
                        await self._lose(entry, "the node restarted without this task")
        self.wake()

    async def on_report(self, conn: NodeConn, report: node_pb2.TaskReport) -> None:
        entry = self._active.get(report.task_id)
        if (entry is None or not self.serves(conn, entry.tenant)
                or entry.task.node_id != conn.node_id
                or entry.task.attempt != report.attempt
                or entry.task.state not in (pb.ASSIGNED, pb.RUNNING)):
            conn.send(node_pb2.HubMessage(reject=node_pb2.Reject(
                task_id=report.task_id, attempt=report.attempt,
                reason=stale_reason(entry, report.attempt))))
            return
        async with entry.lock:
            try:
                await self._apply_report(entry, conn, report)
            except Conflict:
                if not self.clustered:
                    raise
                # Another hub wrote the task (a cancel request, a takeover): re-read it,
                # and apply the report again if it is still this node's to make.
                await self._refresh_locked(entry)
                if entry.task.node_id != conn.node_id or entry.task.state not in (
                        pb.ASSIGNED, pb.RUNNING) or entry.task.attempt != report.attempt:
                    conn.send(node_pb2.HubMessage(reject=node_pb2.Reject(
                        task_id=report.task_id, attempt=report.attempt,
                        reason=stale_reason(entry, report.attempt))))
                    return
                await self._apply_report(entry, conn, report)

    async def _apply_report(self, entry: Entry, conn: NodeConn,
                            report: node_pb2.TaskReport) -> None:
        skip = max(0, entry.acked_seq - report.first_seq + 1)
        node_events = list(report.events)[skip:]
        if not node_events or entry.task.attempt != report.attempt:
            self._ack(conn, report)
            return
        first = report.first_seq + skip
        new = copy_task(entry.task)
        events: list[pb.TaskEvent] = []
        if first > entry.acked_seq + 1:
            # The node already had acks for events the store no longer holds (the hub's store
            # lost acknowledged writes, e.g. a restore from backup); the node deleted them,
            # so they cannot come again. Say so in the log rather than losing them silently.
            missing = first - entry.acked_seq - 1
            log.warning("task %s attempt %d: %d events lost by the store", entry.task.id,
                        report.attempt, missing)
            events.append(self._event(new, time=self._clock(), output=pb.Output(
                stream=pb.SYSTEM, data=_GAP.format(missing, report.attempt).encode())))
        acked = first + len(node_events) - 1
        ended = None
        for ne in node_events:
            if new.attempt != report.attempt:
                break  # a finish started the next attempt; nothing after it belongs there
            ended = self._apply_node_event(new, ne, events, acked) or ended
        attempt = ended or attempt_row(new, acked)
        await self._save(entry, new, events, attempt=attempt)
        entry.acked_seq = acked if new.attempt == report.attempt else 0
        self._ack(conn, report)
        if new.state == pb.QUEUED:  # finished, and retried as a new attempt
            conn.running.discard((new.id, report.attempt))
            self._enqueue(entry)
        elif states.is_terminal(State(new.state)):
            conn.running.discard((new.id, report.attempt))
            self._finish(entry)

    def _apply_node_event(self, task: pb.Task, ne: node_pb2.NodeEvent,
                          out: list[pb.TaskEvent], acked: int) -> pb.Attempt | None:
        kind = ne.WhichOneof("kind")
        if kind == "output":
            self._add_output(task, ne, out)
        elif kind == "started":
            if task.state == pb.ASSIGNED:
                task.started_at = ne.time
                self._transition(task, Event.START, out, time=ne.time)
        elif kind == "finished":
            fin = ne.finished
            if fin.state not in _FINISH_STATES:
                return None
            task.finished_at = ne.time
            task.has_exit_code = fin.has_exit_code
            task.exit_code = fin.exit_code
            if task.cancel_requested and fin.state == pb.CANCELLED:
                reason = task.reason.removeprefix("cancel requested: ")
            else:
                reason = fin.reason
            self._transition(task, states.FINISH_EVENT[State(fin.state)], out,
                             time=ne.time, reason=reason, exit_code=fin)
            return self._maybe_retry(task, out, acked)
        return None

    def _add_output(self, task: pb.Task, ne: node_pb2.NodeEvent, out: list[pb.TaskEvent]) -> None:
        data = ne.output.data
        cap = task.spec.max_output_bytes or self._config.max_output_bytes
        if task.output_truncated:
            return
        if task.output_bytes + len(data) > cap:
            data = data[: cap - task.output_bytes]
            task.output_truncated = True
        if data:
            task.output_bytes += len(data)
            out.append(self._event(task, time=ne.time, output=pb.Output(
                stream=ne.output.stream, data=data)))
        if task.output_truncated:
            marker = _TRUNCATED.format(cap).encode()
            out.append(self._event(task, time=ne.time, output=pb.Output(
                stream=pb.SYSTEM, data=marker)))

    def _event(self, task: pb.Task, *, time: float, **kind: pb.Output | pb.StateChange
               ) -> pb.TaskEvent:
        task.last_seq += 1
        return pb.TaskEvent(task_id=task.id, seq=task.last_seq, attempt=task.attempt,
                            time=time, **kind)  # type: ignore[arg-type]

    def _transition(self, task: pb.Task, event: Event, out: list[pb.TaskEvent], *,
                    time: float, reason: str = "", node_id: str = "",
                    exit_code: node_pb2.Finished | None = None) -> None:
        task.state = int(states.next_state(State(task.state), event))  # type: ignore[assignment]
        task.reason = reason
        change = pb.StateChange(state=task.state, reason=reason, node_id=node_id or task.node_id)
        if exit_code is not None and exit_code.has_exit_code:
            change.exit_code = exit_code.exit_code
            change.has_exit_code = True
        out.append(self._event(task, time=time, state=change))

    def _maybe_retry(self, task: pb.Task, out: list[pb.TaskEvent], acked: int
                     ) -> pb.Attempt | None:
        """Start the next attempt if the policy allows; returns the ended attempt's row."""
        policy = task.spec.retry
        if not states.should_retry(State(task.state), attempt=task.attempt,
                                   max_attempts=policy.max_attempts,
                                   retry_on_failure=policy.retry_on_failure):
            return None
        ended = attempt_row(task, acked)
        previous = f"attempt {task.attempt} {State(task.state).label}: {task.reason}"
        now = self._clock()
        self._transition(task, Event.RETRY, out, time=now, reason=previous)
        task.attempt += 1
        out[-1].attempt = task.attempt
        task.node_id = ""
        task.cancel_requested = False
        for name in ("assigned_at", "started_at", "finished_at", "exit_code", "has_exit_code"):
            task.ClearField(name)
        return ended

    @staticmethod
    def _ack(conn: NodeConn, report: node_pb2.TaskReport) -> None:
        """Everything up to the report's last event is stored (now or before)."""
        conn.ack(report.task_id, report.attempt, report.first_seq + len(report.events) - 1)

    # -- shared plumbing ------------------------------------------------------------------
    async def _move(self, entry: Entry, event: Event, *, reason: str = "",
                    node_id: str = "") -> None:
        """Apply one state machine event to an entry (caller holds its lock) and persist."""
        new = copy_task(entry.task)
        now = self._clock()
        events: list[pb.TaskEvent] = []
        if event is Event.ASSIGN:
            new.node_id = node_id
            new.assigned_at = now
            self.stats.on_assign(now - entry.queued_at)
        self._transition(new, event, events, time=now, reason=reason)
        ended = None
        if states.is_terminal(State(new.state)):
            new.finished_at = new.finished_at or now
            ended = self._maybe_retry(new, events, entry.acked_seq)
        attempt = ended or attempt_row(new, entry.acked_seq)
        await self._save(entry, new, events, attempt=attempt, claim=event is Event.ASSIGN)
        if new.state == pb.QUEUED and event is not Event.ASSIGN:
            self._enqueue(entry)
        elif states.is_terminal(State(new.state)):
            self._finish(entry)

    async def _save(self, entry: Entry, new: pb.Task, events: list[pb.TaskEvent], *,
                    attempt: pb.Attempt | None = None, claim: bool = False) -> None:
        new.version = entry.task.version + 1
        write = self._store.claim_task if claim else self._store.save_task

        async def commit() -> None:
            await self.own_write(new.id, new.version, write(
                entry.tenant, new, expected_version=entry.task.version, events=events,
                attempt=attempt))
            self.ledger.move(entry.tenant, new.spec, entry.task.state, new.state)
            entry.task = new
            entry.remember(events)
            changed, entry.changed = entry.changed, asyncio.Event()
            changed.set()
            self._wake_watchers(new.id)

        # Shielded: a caller cancelled mid-write (a node stream cut by revocation or a
        # reconnect) must not leave the store one version ahead of memory, which would
        # fail every later write of the task with Conflict.
        await asyncio.shield(commit())

    def _finish(self, entry: Entry) -> None:
        task = entry.task
        if states.is_terminal(State(task.state)):
            self._orphans.pop(task.id, None)
            self.stats.on_finish(entry.tenant, State(task.state).label)
            self._active.pop(task.id, None)
            self._queued.pop(task.id, None)
            for queue in self._done_waiters.pop(task.id, ()):
                queue.put_nowait(task)
        self._wake.set()

    def _send_cancel(self, entry: Entry, reason: str, state: int) -> None:
        conn = self._registry.get(entry.task.node_id)
        if conn is not None:
            conn.send(node_pb2.HubMessage(cancel=node_pb2.CancelTask(
                task_id=entry.task.id, attempt=entry.task.attempt, reason=reason,
                state=state)))  # type: ignore[arg-type]


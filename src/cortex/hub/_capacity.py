"""Tenancy and placement in the task manager: quotas, pools (shared or not), which nodes
may serve a tenant, and which node a task goes to (a browser session's tasks to the node
its session is pinned to). A mixin of `TaskManager`, split out to keep each module
readable; the decisions are pure (`cortex.core.quota`, `cortex.core.placement`), this is
their bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core import placement
from cortex.core.quota import Quota, Usage, refuse_reason, wait_reason
from cortex.errors import NotFound, QuotaExceeded
from cortex.hub._entry import Entry
from cortex.hub._fair import Ledger, demand_of
from cortex.hub.registry import NodeConn, Registry
from cortex.store.base import DEFAULT_POOL, Store

__all__ = ["Capacity"]

_SESSION_OPENERS = frozenset({"open", "restore"})  # browser actions that start a session


class Capacity:
    _active: dict[str, Entry]
    _queued: dict[str, Entry]
    _registry: Registry
    _store: Store
    _wake: asyncio.Event
    _shared: dict[tuple[str, str], frozenset[str]]
    _sessions: dict[tuple[str, str], str]  # (tenant, session id) -> the node it is pinned to
    _clock: Callable[[], float]
    ledger: Ledger

    if TYPE_CHECKING:
        async def _set_reason(self, entry: Entry, reason: str) -> None: ...

    async def _check_pools(self, tenant: str, pools: set[str]) -> None:
        for pool in sorted(pools - {""}):
            if await self._store.get_pool(tenant, pool) is None:
                raise NotFound(f"no pool {pool!r} in tenant {tenant!r} "
                               f"(list them with `cortex pool ls`)")

    def _admit(self, tenant: str, spec: pb.TaskSpec) -> None:
        """Refuse a task that alone exceeds its tenant's quota (it could never start)."""
        why = refuse_reason(tenant, self.ledger.quota(tenant), demand_of(spec))
        if why:
            raise QuotaExceeded(why)

    def set_limits(self, tenant: str, *, weight: float, quota: Quota) -> None:
        """A tenant's new weight and quota (stored by the caller); queued work re-checked."""
        self.ledger.set_limits(tenant, weight=weight, quota=quota)
        self._wake.set()

    def share_pool(self, owner: str, pool: str, tenants: Iterable[str]) -> None:
        """Let `tenants` run tasks on the nodes of `owner`'s `pool` (stored by the caller)."""
        self._shared[(owner, pool)] = frozenset(tenants)
        self._wake.set()

    def serves(self, conn: NodeConn, tenant: str) -> bool:
        """Whether the node on `conn` may run tasks of `tenant`: its own, or shared with it."""
        return conn.tenant == tenant or tenant in self._shared.get(
            (conn.tenant, conn.node.pool or DEFAULT_POOL), ())

    def _conns_for(self, tenant: str) -> list[NodeConn]:
        """The connected nodes that may run `tenant`'s tasks."""
        own = self._registry.for_tenant(tenant)
        if not self._shared:
            return own
        return own + [c for c in self._registry.all()
                      if c.tenant != tenant and self.serves(c, tenant)]

    def active_tasks(self) -> list[pb.Task]:
        """The unfinished tasks this hub holds (latest committed copies)."""
        return [entry.task for entry in self._active.values()]

    def statistics(self) -> dict[str, int]:
        return {"active": len(self._active), "queued": len(self._queued)}

    def usage(self, tenant: str) -> Usage:
        return self.ledger.of(tenant)

    def queued(self, tenant: str) -> int:
        return sum(1 for e in self._queued.values() if e.tenant == tenant)

    def _views(self, conns: list[NodeConn], req: placement.TaskRequirements
               ) -> list[placement.NodeView]:
        """Placement's view of `conns`; what their tasks hold is summed only when the task
        asks for resources (it costs a walk over each node's tasks)."""
        if not (req.cpus or req.memory_mib or req.gpus):
            return [c.view() for c in conns]
        out = []
        for c in conns:
            used = pb.Resources()
            for task_id, _ in c.running:
                held = self._active.get(task_id)
                if held is not None:
                    r = held.task.spec.resources
                    used.cpus += r.cpus
                    used.memory_mib += r.memory_mib
                    used.gpus += r.gpus
            out.append(c.view(used))
        return out

    async def _over_quota(self, entry: Entry, usage: Usage, skip: set[str]) -> bool:
        """Whether the tenant's quota keeps `entry` waiting now (saying so in its reason)."""
        quota = self.ledger.quota(entry.tenant)
        why = wait_reason(entry.tenant, quota, usage, demand_of(entry.task.spec))
        if not why:
            return False
        if quota.tasks and usage.tasks >= quota.tasks:
            skip.add(entry.tenant)  # no task of this tenant can start until one ends
        if entry.task.reason != why:
            await self._set_reason(entry, why)
        return True

    def _requirements(self, entry: Entry) -> placement.TaskRequirements:
        spec = entry.task.spec
        return placement.TaskRequirements(
            skill=spec.skill, labels=dict(spec.labels), node_id=spec.node_id,
            session_node=self._session_node(entry), pool=spec.pool,
            cpus=spec.resources.cpus, memory_mib=spec.resources.memory_mib,
            gpus=spec.resources.gpus, new_session=self._opens_session(entry),
        )

    def _opens_session(self, entry: Entry) -> bool:
        """A browser open/restore of a session not pinned to a node yet: it opens one."""
        spec = entry.task.spec
        if spec.skill != "browser" or not spec.session_id or self._session_node(entry):
            return False
        action = spec.args.fields.get("action")
        return action is not None and action.string_value in _SESSION_OPENERS

    async def _place(self, entry: Entry, conns: list[NodeConn]) -> NodeConn | None:
        sid = entry.task.spec.session_id
        if sid and (entry.tenant, sid) not in self._sessions:
            pinned = await self._store.session_node(entry.tenant, sid)
            if pinned:
                self._sessions[(entry.tenant, sid)] = pinned
        req = self._requirements(entry)
        decision = placement.place(req, self._views(conns, req))
        if decision.node_id is None:
            if "busy" not in decision.reason and entry.task.reason != decision.reason:
                await self._set_reason(entry, decision.reason)
            return None
        return self._registry.get(decision.node_id)

    def _session_node(self, entry: Entry) -> str:
        """The node a task's session is pinned to ("" if it has none, or none yet)."""
        sid = entry.task.spec.session_id
        return self._sessions.get((entry.tenant, sid), "") if sid else ""

    async def _pin_session(self, entry: Entry, node_id: str) -> str:
        """Pin the task's session to `node_id` on its first placement; the pinned node."""
        sid = entry.task.spec.session_id
        if not sid:
            return node_id
        key = (entry.tenant, sid)
        if key not in self._sessions:
            self._sessions[key] = await self._store.pin_session(
                entry.tenant, sid, node_id, now=self._clock())
        return self._sessions[key]

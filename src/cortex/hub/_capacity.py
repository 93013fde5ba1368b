"""Tenancy in the task manager: quotas, pools (shared or not) and which nodes may serve a
tenant. A mixin of `TaskManager`, split out to keep each module readable; the decisions
are pure (`cortex.core.quota`, `cortex.core.placement`), this is their bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
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


class Capacity:
    _active: dict[str, Entry]
    _queued: dict[str, Entry]
    _registry: Registry
    _store: Store
    _wake: asyncio.Event
    _shared: dict[tuple[str, str], frozenset[str]]
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

"""The hub's queue of waiting tasks, per tenant, and each tenant's quota ledger.

`FairQueue` keeps one heap per tenant ordered by (priority, arrival); the dispatcher asks
it for the next task, and it answers from the tenant that `cortex.core.quota.pick_tenant`
names (lowest weighted share first). `Ledger` holds each tenant's weight and quota and
what its assigned and running tasks hold now. Bookkeeping only: decisions are in
`cortex.core.quota`, I/O in the task manager.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.quota import Demand, Quota, Usage, pick_tenant

__all__ = ["FairQueue", "Ledger", "demand_of", "holds"]

Item = tuple[int, int, str]   # (-priority, arrival, task id)


def demand_of(spec: pb.TaskSpec) -> Demand:
    r = spec.resources
    return Demand(cpus=r.cpus, memory_mib=r.memory_mib, gpus=r.gpus,
                  browser_sessions=r.browser_sessions)


def holds(state: int) -> bool:
    """Whether a task in `state` holds capacity (counts against its tenant's quota)."""
    return state in (pb.ASSIGNED, pb.RUNNING)


class FairQueue:
    def __init__(self) -> None:
        self._heaps: dict[str, list[Item]] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def push(self, tenant: str, priority: int, task_id: str) -> None:
        self._arrivals += 1
        heapq.heappush(self._heaps.setdefault(tenant, []), (-priority, self._arrivals, task_id))

    def push_back(self, tenant: str, item: Item) -> None:
        """Return a popped item unchanged (it keeps its place in line)."""
        heapq.heappush(self._heaps.setdefault(tenant, []), item)

    def pop_next(self, usage: Mapping[str, Usage], weights: Mapping[str, float],
                 skip: Collection[str]) -> tuple[str, Item] | None:
        """The best task of the tenant whose turn it is, leaving out tenants in `skip`."""
        waiting = [t for t, h in self._heaps.items() if h and t not in skip]
        tenant = pick_tenant(waiting, usage, weights)
        if tenant is None:
            return None
        heap = self._heaps[tenant]
        item = heapq.heappop(heap)
        if not heap:
            del self._heaps[tenant]
        return tenant, item


class Ledger:
    def __init__(self) -> None:
        self._weights: dict[str, float] = {}
        self._quotas: dict[str, Quota] = {}
        self.usage: dict[str, Usage] = {}

    @property
    def weights(self) -> Mapping[str, float]:
        return self._weights

    def set_limits(self, tenant: str, *, weight: float, quota: Quota) -> None:
        self._weights[tenant] = weight
        self._quotas[tenant] = quota

    def quota(self, tenant: str) -> Quota:
        return self._quotas.get(tenant, Quota())

    def of(self, tenant: str) -> Usage:
        return self.usage.get(tenant, Usage())

    def hold(self, tenant: str, demand: Demand) -> None:
        self.usage[tenant] = self.of(tenant).plus(demand)

    def release(self, tenant: str, demand: Demand) -> None:
        self.usage[tenant] = self.of(tenant).minus(demand)

    def move(self, tenant: str, spec: pb.TaskSpec, was: int, now: int) -> None:
        """A task of `tenant` went from state `was` to `now`: hold or release its demand
        when that starts or ends its holding capacity."""
        if holds(was) != holds(now):
            if holds(now):
                self.hold(tenant, demand_of(spec))
            else:
                self.release(tenant, demand_of(spec))

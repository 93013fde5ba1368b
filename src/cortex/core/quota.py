"""Per-tenant quotas and weighted fair share. Pure: values in, decisions out.

A tenant's quota bounds what its tasks hold at once (assigned or running): how many
tasks, CPU cores, memory, GPUs and browser sessions. A zero field means "no limit".
Tasks declare what they need (`Demand`); the hub keeps each tenant's `Usage` and asks
two questions of this module:

- `refuse_reason`: can this task *ever* run under the quota? If it alone exceeds it,
  Submit refuses it with a message naming the quota — waiting would be forever.
- `wait_reason`: can it start *now*? If not, it stays queued with reason ``quota: ...``
  and starts when the tenant's running work frees enough.

Fair share (`pick_tenant`): among tenants with work waiting, the one whose usage per
unit of weight is lowest goes next (weight 2 gets twice the share of weight 1), ties
broken by name so the order is deterministic. Priority within a tenant is the caller's
heap order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

__all__ = ["Demand", "Quota", "Usage", "pick_tenant", "refuse_reason", "share", "wait_reason"]

_LABELS = {
    "tasks": "concurrent tasks",
    "cpus": "CPU cores",
    "memory_mib": "memory (MiB)",
    "gpus": "GPUs",
    "browser_sessions": "browser sessions",
}


@dataclass(frozen=True, slots=True)
class Quota:
    """Upper bounds of what one tenant's tasks may hold at once (0 = unlimited)."""

    tasks: int = 0
    cpus: float = 0.0
    memory_mib: int = 0
    gpus: int = 0
    browser_sessions: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"quota {f.name} must be >= 0, got {getattr(self, f.name)}")

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> Quota:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown quota field(s): {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(tasks=int(data.get("tasks", 0)), cpus=float(data.get("cpus", 0.0)),
                   memory_mib=int(data.get("memory_mib", 0)), gpus=int(data.get("gpus", 0)),
                   browser_sessions=int(data.get("browser_sessions", 0)))


@dataclass(frozen=True, slots=True)
class Demand:
    """What one task needs while it holds a node (always one task)."""

    cpus: float = 0.0
    memory_mib: int = 0
    gpus: int = 0
    browser_sessions: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """What a tenant's assigned and running tasks hold now."""

    tasks: int = 0
    cpus: float = 0.0
    memory_mib: int = 0
    gpus: int = 0
    browser_sessions: int = 0

    def plus(self, d: Demand) -> Usage:
        return Usage(self.tasks + 1, self.cpus + d.cpus, self.memory_mib + d.memory_mib,
                     self.gpus + d.gpus, self.browser_sessions + d.browser_sessions)

    def minus(self, d: Demand) -> Usage:
        # Clamped: a usage never goes negative even if a release is applied twice.
        return Usage(max(0, self.tasks - 1), max(0.0, _round(self.cpus - d.cpus)),
                     max(0, self.memory_mib - d.memory_mib), max(0, self.gpus - d.gpus),
                     max(0, self.browser_sessions - d.browser_sessions))


def _round(x: float) -> float:
    # Float sums of fractional cores drift (0.1 + 0.2 - 0.2 != 0.1); 1e-9 of a core is noise.
    return round(x, 9)


def _over(quota: Quota, need: Usage) -> list[str]:
    """The quota fields `need` exceeds, as (field) names."""
    out = []
    for f in fields(quota):
        limit = getattr(quota, f.name)
        if limit and _round(getattr(need, f.name)) > limit:
            out.append(f.name)
    return out


def refuse_reason(tenant: str, quota: Quota, demand: Demand) -> str:
    """Why a task can never run under `quota` (empty if it can, when the tenant is idle)."""
    over = _over(quota, Usage().plus(demand))
    if not over:
        return ""
    parts = [f"{_LABELS[name]}: the task needs {_fmt(getattr(Usage().plus(demand), name))}, "
             f"the quota is {_fmt(getattr(quota, name))}" for name in over]
    return (f"the task exceeds tenant {tenant!r}'s quota on its own ({'; '.join(parts)}); "
            f"ask for less or have a hub-admin raise it (`cortex tenant limits`)")


def wait_reason(tenant: str, quota: Quota, usage: Usage, demand: Demand) -> str:
    """Why a task cannot start now under `quota` given `usage` (empty if it can)."""
    over = _over(quota, usage.plus(demand))
    if not over:
        return ""
    # Names the limit, not the current usage, so the reason stays the same (and is stored
    # once) while the task waits.
    name = over[0]
    return (f"quota: tenant {tenant!r} is at its limit of {_fmt(getattr(quota, name))} "
            f"{_LABELS[name]}; the task needs {_fmt(getattr(Usage().plus(demand), name))} "
            f"and starts when enough frees up")


def _fmt(x: float) -> str:
    return f"{x:g}"


def share(usage: Usage, weight: float) -> float:
    """A tenant's fair-share key: tasks held per unit of weight (lower goes first)."""
    return usage.tasks / weight if weight > 0 else float("inf")


def pick_tenant(waiting: Iterable[str], usage: Mapping[str, Usage],
                weights: Mapping[str, float]) -> str | None:
    """Which of the tenants with work `waiting` should get the next slot."""
    best: tuple[float, str] | None = None
    for tenant in waiting:
        key = (share(usage.get(tenant, Usage()), weights.get(tenant, 1.0)), tenant)
        if best is None or key < best:
            best = key
    return None if best is None else best[1]


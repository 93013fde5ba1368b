"""The tenants page: weights, quotas, what each tenant holds now (the task manager's
ledger), its pools; and the hub-admin's form that changes a tenant's limits.

An admin sees their own tenant; a hub-admin sees every tenant of the hub and may change
any tenant's weight and quota (as `cortex tenant set`, i.e. AdminService.SetTenantLimits,
whose access rule the form shares).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cortex.core.quota import Quota, Usage
from cortex.errors import InvalidArgument, NotFound, PermissionDenied
from cortex.hub.access import ACCESS
from cortex.hub.auth import Principal
from cortex.hub.registry import Registry
from cortex.hub.tasks import TaskManager
from cortex.store.base import Store, TenantRecord

__all__ = ["LIMIT_ROLES", "PoolRow", "TenantRow", "parse_limits", "set_limits", "tenant_rows"]

log = logging.getLogger("cortex.hub.web")

LIMIT_ROLES = ACCESS["/cortex.v1.AdminService/SetTenantLimits"]
"""Who may change limits from the dashboard: whoever may call SetTenantLimits."""
QUOTA_FIELDS = tuple(f.name for f in fields(Quota))
_LABELS = {"tasks": "concurrent tasks", "cpus": "CPU cores", "memory_mib": "memory (MiB)",
           "gpus": "GPUs", "browser_sessions": "browser sessions"}
_MAX_WEIGHT = 1000.0


@dataclass(frozen=True, slots=True)
class PoolRow:
    name: str
    description: str
    nodes: int
    online: int
    shared_with: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TenantRow:
    """One tenant as the page shows it."""

    id: str
    created_at: float
    weight: float
    quota: Quota
    usage: Usage
    queued: int
    pools: list[PoolRow]

    def limits(self) -> list[tuple[str, str, float, float]]:
        """(field, label, in use, quota) for each quota field; quota 0 = unlimited."""
        return [(name, _LABELS.get(name, name), getattr(self.usage, name),
                 getattr(self.quota, name)) for name in QUOTA_FIELDS]


async def tenant_rows(store: Store, tasks: TaskManager, registry: Registry,
                      who: Principal) -> list[TenantRow]:
    """Every tenant for a hub-admin, the caller's own tenant for an admin."""
    if who.role == "hub-admin":
        records = await store.list_tenants_all()
    else:
        own = await store.get_tenant(who.tenant)
        records = [own] if own is not None else []
    return [await _row(store, tasks, registry, rec) for rec in records]


async def _row(store: Store, tasks: TaskManager, registry: Registry,
               rec: TenantRecord) -> TenantRow:
    nodes = await store.list_nodes(rec.id)
    online = {c.node_id for c in registry.for_tenant(rec.id)}
    pools = []
    for p in await store.list_pools(rec.id):
        members = [n.id for n in nodes if (n.pool or "default") == p.name]
        pools.append(PoolRow(p.name, p.description, len(members),
                             sum(1 for m in members if m in online), p.shared_with))
    return TenantRow(id=rec.id, created_at=rec.created_at, weight=rec.weight,
                     quota=Quota.from_dict(rec.quota), usage=tasks.usage(rec.id),
                     queued=tasks.queued(rec.id), pools=pools)


def parse_limits(form: Mapping[str, Any]) -> tuple[str, float, Quota]:
    """(tenant, weight, quota) from the limits form, or InvalidArgument naming the field."""
    tenant = str(form.get("tenant", "")).strip()
    if not tenant or len(tenant) > 63:
        raise InvalidArgument("tenant: name the tenant whose limits change")
    weight = _number(form, "weight", default="1")
    if not 0 < weight <= _MAX_WEIGHT:
        raise InvalidArgument(f"weight must be more than 0 and at most {_MAX_WEIGHT:g}, "
                              f"got {weight:g}")
    values = {name: _number(form, name, default="0") for name in QUOTA_FIELDS}
    for name, value in values.items():
        if name != "cpus" and not float(value).is_integer():
            raise InvalidArgument(f"{name}: a whole number, got {value:g}")
    try:
        quota = Quota.from_dict(values)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    return tenant, weight, quota


def _number(form: Mapping[str, Any], name: str, *, default: str) -> float:
    raw = str(form.get(name, "") or default).strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"{name}: a number, got {raw[:40]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{name}: a finite number, got {raw[:40]!r}")
    return value


async def set_limits(store: Store, tasks: TaskManager, who: Principal,
                     form: Mapping[str, Any]) -> str:
    """Store and apply the form's limits; the tenant changed."""
    if who.role not in LIMIT_ROLES:
        raise PermissionDenied(f"role {who.role!r} may not change tenant limits: that "
                               "needs a hub-admin token")
    tenant, weight, quota = parse_limits(form)
    if await store.get_tenant(tenant) is None:
        raise NotFound(f"no tenant {tenant!r}")
    await store.set_tenant_limits(tenant, weight=weight, quota=quota.as_dict())
    tasks.set_limits(tenant, weight=weight, quota=quota)
    log.info("dashboard: token %s set tenant %s's weight %g and quota %s", who.token_id,
             tenant, weight, quota.as_dict() or "unlimited", extra={"tenant": tenant})
    return tenant

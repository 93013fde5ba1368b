"""AdminService: tenants (hub-wide), pools and API tokens (per tenant)."""

from __future__ import annotations

import re
import time

from cortex._proto.cortex.v1 import admin_pb2, admin_pb2_grpc
from cortex.core.quota import Quota, Usage
from cortex.errors import InvalidArgument, NotFound
from cortex.hub._grpc_errors import Ctx, unary
from cortex.hub.access import HUB_ADMIN, may_name_tenant
from cortex.hub.auth import Authenticator, Principal, issue_api_token_record
from cortex.hub.registry import Registry
from cortex.hub.services import authenticated
from cortex.hub.tasks import TaskManager
from cortex.store.base import ApiTokenRecord, PoolRecord, Store, TenantRecord

__all__ = ["AdminServicer", "check_name"]

_SERVICE = "/cortex.v1.AdminService/"
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_name(value: str, what: str) -> str:
    """A tenant or pool name: DNS-label style, so it fits in URIs, paths and labels."""
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"{what} name {value!r}: use 1-63 lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit")
    return value


def quota_from_pb(q: admin_pb2.Quota) -> Quota:
    try:
        return Quota(tasks=q.tasks, cpus=q.cpus, memory_mib=q.memory_mib, gpus=q.gpus,
                     browser_sessions=q.browser_sessions)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def quota_to_pb(q: Quota | Usage) -> admin_pb2.Quota:
    return admin_pb2.Quota(tasks=q.tasks, cpus=q.cpus, memory_mib=q.memory_mib, gpus=q.gpus,
                           browser_sessions=q.browser_sessions)


def _weight(value: float) -> float:
    if not 0 < value <= 1000:
        raise InvalidArgument(f"weight must be more than 0 and at most 1000, got {value:g}")
    return value


def token_to_pb(rec: ApiTokenRecord) -> admin_pb2.ApiToken:
    return admin_pb2.ApiToken(id=rec.id, tenant=rec.tenant, name=rec.name, role=rec.role,
                              created_at=rec.created_at, expires_at=rec.expires_at,
                              revoked_at=rec.revoked_at)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, *, store: Store, auth: Authenticator, tasks: TaskManager,
                 registry: Registry) -> None:
        self._store = store
        self._auth = auth
        self._tasks = tasks
        self._registry = registry

    async def _principal(self, context: Ctx, rpc: str) -> Principal:
        return await authenticated(self._auth, context, _SERVICE + rpc)

    async def _tenant_pb(self, rec: TenantRecord) -> admin_pb2.Tenant:
        return admin_pb2.Tenant(
            id=rec.id, created_at=rec.created_at, weight=rec.weight,
            quota=quota_to_pb(Quota.from_dict(rec.quota)),
            usage=quota_to_pb(self._tasks.usage(rec.id)), queued=self._tasks.queued(rec.id))

    async def _existing(self, tenant: str) -> TenantRecord:
        rec = await self._store.get_tenant(tenant)
        if rec is None:
            raise NotFound(f"no tenant {tenant!r} (list them with `cortex tenant ls`)")
        return rec

    # -- tenants (hub-admin) -------------------------------------------------------------
    @unary
    async def CreateTenant(self, request: admin_pb2.CreateTenantRequest,
                           context: Ctx) -> admin_pb2.Tenant:
        await self._principal(context, "CreateTenant")
        rec = TenantRecord(id=check_name(request.id, "tenant"), created_at=time.time(),
                           weight=_weight(request.weight or 1.0),
                           quota=quota_from_pb(request.quota).as_dict())
        await self._store.create_tenant(rec)
        self._tasks.set_limits(rec.id, weight=rec.weight, quota=Quota.from_dict(rec.quota))
        return await self._tenant_pb(rec)

    @unary
    async def ListTenants(self, request: admin_pb2.ListTenantsRequest,
                          context: Ctx) -> admin_pb2.ListTenantsResponse:
        await self._principal(context, "ListTenants")
        return admin_pb2.ListTenantsResponse(
            tenants=[await self._tenant_pb(t) for t in await self._store.list_tenants_all()])

    @unary
    async def SetTenantLimits(self, request: admin_pb2.SetTenantLimitsRequest,
                              context: Ctx) -> admin_pb2.Tenant:
        await self._principal(context, "SetTenantLimits")
        old = await self._existing(request.tenant)
        weight = _weight(request.weight) if request.weight else old.weight
        quota = (quota_from_pb(request.quota) if request.has_quota
                 else Quota.from_dict(old.quota))
        rec = await self._store.set_tenant_limits(old.id, weight=weight, quota=quota.as_dict())
        self._tasks.set_limits(rec.id, weight=weight, quota=quota)
        return await self._tenant_pb(rec)

    @unary
    async def GetTenant(self, request: admin_pb2.GetTenantRequest,
                        context: Ctx) -> admin_pb2.Tenant:
        who = await self._principal(context, "GetTenant")
        tenant = may_name_tenant(who.role, who.tenant, request.tenant)
        return await self._tenant_pb(await self._existing(tenant))

    # -- pools -------------------------------------------------------------------------
    @unary
    async def CreatePool(self, request: admin_pb2.CreatePoolRequest,
                         context: Ctx) -> admin_pb2.Pool:
        who = await self._principal(context, "CreatePool")
        tenant = may_name_tenant(who.role, who.tenant, request.tenant)
        await self._existing(tenant)
        if len(request.description) > 512:
            raise InvalidArgument("description: at most 512 characters")
        shared = tuple(sorted(set(request.shared_with)))
        for other in shared:
            if other == tenant:
                raise InvalidArgument("shared_with: a pool is always its own tenant's; "
                                      "list only other tenants")
            await self._existing(other)
        rec = PoolRecord(tenant=tenant, name=check_name(request.name, "pool"),
                         created_at=time.time(), description=request.description,
                         shared_with=shared)
        await self._store.create_pool(rec)
        if shared:
            self._tasks.share_pool(tenant, rec.name, shared)
        return admin_pb2.Pool(tenant=tenant, name=rec.name, description=rec.description,
                              created_at=rec.created_at, shared_with=shared)

    @unary
    async def ListPools(self, request: admin_pb2.ListPoolsRequest,
                        context: Ctx) -> admin_pb2.ListPoolsResponse:
        who = await self._principal(context, "ListPools")
        tenant = may_name_tenant(who.role, who.tenant, request.tenant)
        nodes = await self._store.list_nodes(tenant)
        online = {c.node_id for c in self._registry.for_tenant(tenant)}
        out = []
        for p in await self._store.list_pools(tenant):
            members = [n.id for n in nodes if (n.pool or "default") == p.name]
            out.append(admin_pb2.Pool(
                tenant=tenant, name=p.name, description=p.description, created_at=p.created_at,
                nodes=len(members), online=sum(1 for m in members if m in online),
                shared_with=p.shared_with))
        return admin_pb2.ListPoolsResponse(pools=out)

    # -- API tokens --------------------------------------------------------------------
    @unary
    async def CreateApiToken(self, request: admin_pb2.CreateApiTokenRequest,
                             context: Ctx) -> admin_pb2.CreateApiTokenResponse:
        who = await self._principal(context, "CreateApiToken")
        tenant = may_name_tenant(who.role, who.tenant, request.tenant)
        await self._existing(tenant)
        if request.role == HUB_ADMIN and who.role != HUB_ADMIN:
            raise InvalidArgument("only a hub-admin may create hub-admin tokens")
        secret, rec = await issue_api_token_record(
            self._store, tenant=tenant, role=request.role, name=request.name,
            now=time.time(), ttl_s=request.ttl_s)
        return admin_pb2.CreateApiTokenResponse(token=token_to_pb(rec), secret=secret)

    @unary
    async def ListApiTokens(self, request: admin_pb2.ListApiTokensRequest,
                            context: Ctx) -> admin_pb2.ListApiTokensResponse:
        who = await self._principal(context, "ListApiTokens")
        tenant = may_name_tenant(who.role, who.tenant, request.tenant)
        return admin_pb2.ListApiTokensResponse(
            tokens=[token_to_pb(t) for t in await self._store.list_api_tokens(tenant)])

    @unary
    async def RevokeApiToken(self, request: admin_pb2.RevokeApiTokenRequest,
                             context: Ctx) -> admin_pb2.ApiToken:
        who = await self._principal(context, "RevokeApiToken")
        tenant = may_name_tenant(who.role, who.tenant, request.tenant)
        if not request.id or len(request.id) > 64:
            raise InvalidArgument("id: give the token id shown by `cortex token ls`")
        rec = await self._store.revoke_api_token(tenant, request.id, now=time.time())
        self._auth.forget(rec.id)
        return token_to_pb(rec)

"""Tenancy administration through the SDK: ``client.admin.create_tenant(...)``.

Tenants and their limits need a hub-admin token; pools and API tokens an admin of the
tenant (a hub-admin may name any tenant with ``tenant=``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from cortex._proto.cortex.v1 import admin_pb2, admin_pb2_grpc
from cortex.errors import InvalidArgument
from cortex.sdk._specs import parse_duration

if TYPE_CHECKING:
    from cortex._proto.cortex.v1.admin_pb2_grpc import AdminServiceAsyncStub
    from cortex.sdk._client import Client

__all__ = ["Admin", "NewApiToken", "SyncAdmin", "quota_message"]

Tenant = admin_pb2.Tenant
Pool = admin_pb2.Pool
ApiToken = admin_pb2.ApiToken
_QUOTA_FIELDS = ("tasks", "cpus", "memory_mib", "gpus", "browser_sessions")


class NewApiToken(NamedTuple):
    """A freshly created API token: `secret` (``ctk_...``) is shown this once only."""

    token: admin_pb2.ApiToken
    secret: str


def quota_message(quota: Mapping[str, float] | None) -> admin_pb2.Quota:
    """A Quota message from ``{"tasks": 4, "cpus": 2.5, ...}`` (unknown keys refused)."""
    quota = dict(quota or {})
    unknown = sorted(set(quota) - set(_QUOTA_FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown quota field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(_QUOTA_FIELDS)}")
    bad = [k for k, v in quota.items() if v < 0]
    if bad:
        raise InvalidArgument(f"quota {', '.join(bad)}: must be >= 0 (0 = no limit)")
    msg = admin_pb2.Quota(cpus=float(quota.get("cpus", 0.0)))
    for name in ("tasks", "memory_mib", "gpus", "browser_sessions"):
        setattr(msg, name, int(quota.get(name, 0)))
    return msg


class Admin:
    """The AdminService calls of one `Client` (shares its channel and token)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub_: AdminServiceAsyncStub | None = None

    def _stub(self) -> AdminServiceAsyncStub:
        if self._stub_ is None:
            self._stub_ = admin_pb2_grpc.AdminServiceStub(self._client._open_channel())
        return self._stub_

    # -- tenants (hub-admin) -------------------------------------------------------------
    async def create_tenant(self, tenant: str, *, weight: float = 1.0,
                            quota: Mapping[str, float] | None = None) -> admin_pb2.Tenant:
        return await self._client._unary(self._stub().CreateTenant, admin_pb2.CreateTenantRequest(
            id=tenant, weight=weight, quota=quota_message(quota)))

    async def list_tenants(self) -> list[admin_pb2.Tenant]:
        resp = await self._client._unary(self._stub().ListTenants,
                                         admin_pb2.ListTenantsRequest())
        return list(resp.tenants)

    async def set_tenant_limits(self, tenant: str, *, weight: float | None = None,
                                quota: Mapping[str, float] | None = None
                                ) -> admin_pb2.Tenant:
        """Change a tenant's weight and/or replace its quota (fields left out: no limit)."""
        req = admin_pb2.SetTenantLimitsRequest(tenant=tenant, weight=weight or 0.0,
                                               has_quota=quota is not None)
        if quota is not None:
            req.quota.CopyFrom(quota_message(quota))
        return await self._client._unary(self._stub().SetTenantLimits, req)

    async def get_tenant(self, tenant: str = "") -> admin_pb2.Tenant:
        """A tenant's limits, usage and queue length (default: the token's own tenant)."""
        return await self._client._unary(self._stub().GetTenant,
                                         admin_pb2.GetTenantRequest(tenant=tenant))

    # -- pools -------------------------------------------------------------------------
    async def create_pool(self, name: str, *, description: str = "", tenant: str = "",
                          shared_with: Iterable[str] = ()) -> admin_pb2.Pool:
        """A node pool; `shared_with` other tenants lets their tasks run on its nodes too."""
        return await self._client._unary(self._stub().CreatePool, admin_pb2.CreatePoolRequest(
            tenant=tenant, name=name, description=description, shared_with=list(shared_with)))

    async def list_pools(self, *, tenant: str = "") -> list[admin_pb2.Pool]:
        resp = await self._client._unary(self._stub().ListPools,
                                         admin_pb2.ListPoolsRequest(tenant=tenant))
        return list(resp.pools)

    # -- API tokens --------------------------------------------------------------------
    async def create_api_token(self, name: str, *, role: str, ttl: float | str = 0.0,
                               tenant: str = "") -> NewApiToken:
        ttl_s = parse_duration(ttl, what="ttl") if ttl else 0.0
        resp = await self._client._unary(
            self._stub().CreateApiToken, admin_pb2.CreateApiTokenRequest(
                tenant=tenant, name=name, role=role, ttl_s=ttl_s))
        return NewApiToken(resp.token, resp.secret)

    async def list_api_tokens(self, *, tenant: str = "") -> list[admin_pb2.ApiToken]:
        resp = await self._client._unary(self._stub().ListApiTokens,
                                         admin_pb2.ListApiTokensRequest(tenant=tenant))
        return list(resp.tokens)

    async def revoke_api_token(self, token_id: str, *, tenant: str = "") -> admin_pb2.ApiToken:
        return await self._client._unary(self._stub().RevokeApiToken,
                                         admin_pb2.RevokeApiTokenRequest(tenant=tenant,
                                                                         id=token_id))


class SyncAdmin:
    """Blocking twin of `Admin` (``sync_client.admin.list_tenants()``)."""

    def __init__(self, run: Callable[[Coroutine[Any, Any, Any]], Any], admin: Admin) -> None:
        self._run = run
        self._admin = admin

    def create_tenant(self, tenant: str, *, weight: float = 1.0,
                      quota: Mapping[str, float] | None = None) -> admin_pb2.Tenant:
        return cast(admin_pb2.Tenant, self._run(
            self._admin.create_tenant(tenant, weight=weight, quota=quota)))

    def list_tenants(self) -> list[admin_pb2.Tenant]:
        return cast(list[admin_pb2.Tenant], self._run(self._admin.list_tenants()))

    def set_tenant_limits(self, tenant: str, *, weight: float | None = None,
                          quota: Mapping[str, float] | None = None) -> admin_pb2.Tenant:
        return cast(admin_pb2.Tenant, self._run(
            self._admin.set_tenant_limits(tenant, weight=weight, quota=quota)))

    def get_tenant(self, tenant: str = "") -> admin_pb2.Tenant:
        return cast(admin_pb2.Tenant, self._run(self._admin.get_tenant(tenant)))

    def create_pool(self, name: str, *, description: str = "", tenant: str = "",
                    shared_with: Iterable[str] = ()) -> admin_pb2.Pool:
        return cast(admin_pb2.Pool, self._run(self._admin.create_pool(
            name, description=description, tenant=tenant, shared_with=shared_with)))

    def list_pools(self, *, tenant: str = "") -> list[admin_pb2.Pool]:
        return cast(list[admin_pb2.Pool], self._run(self._admin.list_pools(tenant=tenant)))

    def create_api_token(self, name: str, *, role: str, ttl: float | str = 0.0,
                         tenant: str = "") -> NewApiToken:
        return cast(NewApiToken, self._run(
            self._admin.create_api_token(name, role=role, ttl=ttl, tenant=tenant)))

    def list_api_tokens(self, *, tenant: str = "") -> list[admin_pb2.ApiToken]:
        return cast(list[admin_pb2.ApiToken], self._run(
            self._admin.list_api_tokens(tenant=tenant)))

    def revoke_api_token(self, token_id: str, *, tenant: str = "") -> admin_pb2.ApiToken:
        return cast(admin_pb2.ApiToken, self._run(
            self._admin.revoke_api_token(token_id, tenant=tenant)))

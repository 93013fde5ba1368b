"""The Store contract for tenancy, on every backend: tenants with weights and quotas,
node pools inside a tenant, join tokens into a pool, listing and revoking API tokens.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from cortex.errors import Conflict, NotFound
from cortex.store.base import (
    DEFAULT_POOL,
    ApiTokenRecord,
    JoinTokenRecord,
    PoolRecord,
    Store,
    TenantRecord,
)

A, B = "tenant-a", "tenant-b"
NOW = 1_700_000_000.0

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def db(store: Store) -> Store:
    await store.create_tenant(TenantRecord(A, NOW, weight=2.0, quota={"tasks": 4}))
    await store.ensure_tenant(B, now=NOW)
    return store


async def test_tenant_round_trips_with_weight_and_quota(db: Store) -> None:
    """A created tenant is read back with its weight and quota; ensure_tenant gives defaults."""
    assert await db.get_tenant(A) == TenantRecord(A, NOW, 2.0, {"tasks": 4})
    assert await db.get_tenant(B) == TenantRecord(B, NOW, 1.0, {})
    assert await db.get_tenant("nobody") is None
    assert [t.id for t in await db.list_tenants_all()] == [A, B]


async def test_creating_an_existing_tenant_conflicts(db: Store) -> None:
    """A tenant id is taken once; the second create says so and changes nothing."""
    with pytest.raises(Conflict, match="already exists"):
        await db.create_tenant(TenantRecord(A, NOW + 1, weight=9.0))
    rec = await db.get_tenant(A)
    assert rec is not None
    assert rec.weight == 2.0


async def test_set_tenant_limits_replaces_weight_and_quota(db: Store) -> None:
    """Limits are replaced as a whole; an unknown tenant is NotFound."""
    rec = await db.set_tenant_limits(B, weight=3.0, quota={"cpus": 2.5, "gpus": 1})
    assert rec == TenantRecord(B, NOW, 3.0, {"cpus": 2.5, "gpus": 1})
    assert await db.get_tenant(B) == rec
    with pytest.raises(NotFound):
        await db.set_tenant_limits("nobody", weight=1.0, quota={})


async def test_every_tenant_has_a_default_pool(db: Store) -> None:
    """Both create_tenant and ensure_tenant give the tenant its default pool."""
    assert [p.name for p in await db.list_pools(A)] == [DEFAULT_POOL]
    assert [p.name for p in await db.list_pools(B)] == [DEFAULT_POOL]


async def test_pools_are_per_tenant(db: Store) -> None:
    """The same pool name can exist in two tenants; each tenant sees only its own pools."""
    await db.create_pool(PoolRecord(A, "gpu", NOW, "the GPU boxes"))
    await db.create_pool(PoolRecord(B, "gpu", NOW))
    await db.create_pool(PoolRecord(B, "arm", NOW))
    assert [p.name for p in await db.list_pools(A)] == [DEFAULT_POOL, "gpu"]
    assert [p.name for p in await db.list_pools(B)] == ["arm", DEFAULT_POOL, "gpu"]
    assert await db.get_pool(A, "gpu") == PoolRecord(A, "gpu", NOW, "the GPU boxes")
    assert await db.get_pool(A, "arm") is None
    with pytest.raises(Conflict, match="already exists"):
        await db.create_pool(PoolRecord(A, "gpu", NOW))


async def test_join_token_carries_its_pool(db: Store) -> None:
    """The pool a join token names is what consuming it returns."""
    await db.create_pool(PoolRecord(A, "gpu", NOW))
    await db.create_join_token(JoinTokenRecord("jt-1", A, b"h", {}, NOW, NOW + 60, pool="gpu"))
    rec = await db.consume_join_token("jt-1", b"h", node_id="n-1", now=NOW + 1)
    assert (rec.tenant, rec.pool) == (A, "gpu")


async def test_api_tokens_are_listed_per_tenant_and_revoked_in_place(db: Store) -> None:
    """list_api_tokens shows only the tenant's tokens; revoke marks one, once, tenant-bound."""
    await db.create_api_token(ApiTokenRecord("t1", A, "ci", "agent", b"h1", NOW))
    await db.create_api_token(ApiTokenRecord("t2", A, "ops", "operator", b"h2", NOW + 1))
    await db.create_api_token(ApiTokenRecord("t3", B, "ci", "admin", b"h3", NOW))
    assert [t.id for t in await db.list_api_tokens(A)] == ["t1", "t2"]
    assert [t.id for t in await db.list_api_tokens(B)] == ["t3"]
    rec = await db.revoke_api_token(A, "t1", now=NOW + 5)
    assert rec.revoked_at == NOW + 5
    again = await db.revoke_api_token(A, "t1", now=NOW + 9)
    assert again.revoked_at == NOW + 5, "revoking twice keeps the first time"
    found = await db.find_api_token("t1")
    assert found is not None
    assert found.revoked_at == NOW + 5
    with pytest.raises(NotFound):
        await db.revoke_api_token(B, "t2", now=NOW)   # another tenant's token
    t2 = await db.find_api_token("t2")
    assert t2 is not None
    assert t2.revoked_at == 0

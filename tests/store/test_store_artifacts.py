"""The artifact part of the Store contract, on every backend: tenant isolation, listing,
deletion, usage, expiry and the digests GC must keep."""

from __future__ import annotations

import pytest

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict
from cortex.store.base import Store

pytestmark = pytest.mark.asyncio

A, B = "tenant-a", "tenant-b"
NOW = 1_700_000_000.0


def art(artifact_id: str, *, task_id: str = "t-1", size: int = 10, digest: str = "a" * 64,
        expires_at: float = 0.0) -> pb.File:
    return pb.File(artifact_id=artifact_id, task_id=task_id, name=f"out/{artifact_id}.bin",
                   size=size, sha256=digest, media_type="application/octet-stream",
                   created_at=NOW, expires_at=expires_at)


async def _tenants(store: Store) -> None:
    await store.ensure_tenant(A, now=NOW)
    await store.ensure_tenant(B, now=NOW)


async def test_artifacts_round_trip_and_stay_in_their_tenant(store: Store) -> None:
    """An artifact reads back as written, and only for its own tenant."""
    await _tenants(store)
    await store.insert_artifact(A, art("a-1"))
    assert await store.get_artifact(A, "a-1") == art("a-1")
    assert await store.get_artifact(B, "a-1") is None
    assert await store.list_artifacts(B) == []
    assert not await store.delete_artifact(B, "a-1")
    assert await store.artifact_bytes(B) == 0
    assert await store.get_artifact(A, "a-1") is not None


async def test_duplicate_artifact_id_is_a_conflict(store: Store) -> None:
    """Two artifacts never share an id."""
    await _tenants(store)
    await store.insert_artifact(A, art("a-1"))
    with pytest.raises(Conflict):
        await store.insert_artifact(A, art("a-1"))


async def test_list_artifacts_by_task_pages_in_id_order(store: Store) -> None:
    """Listing filters by task and pages with after_id."""
    await _tenants(store)
    for i in range(5):
        await store.insert_artifact(A, art(f"a-{i}", task_id="t-1" if i % 2 else "t-2"))
    assert [f.artifact_id for f in await store.list_artifacts(A, task_id="t-1")] == \
        ["a-1", "a-3"]
    first = await store.list_artifacts(A, limit=2)
    rest = await store.list_artifacts(A, limit=10, after_id=first[-1].artifact_id)
    assert [f.artifact_id for f in first + rest] == [f"a-{i}" for i in range(5)]


async def test_usage_counts_each_artifact_and_delete_frees_it(store: Store) -> None:
    """Quota usage sums artifact sizes per tenant, deduped blobs counted per artifact."""
    await _tenants(store)
    await store.insert_artifact(A, art("a-1", size=100))
    await store.insert_artifact(A, art("a-2", size=50))
    await store.insert_artifact(B, art("b-1", size=7))
    assert await store.artifact_bytes(A) == 150
    assert await store.delete_artifact(A, "a-1")
    assert await store.artifact_bytes(A) == 50
    assert await store.artifact_bytes(B) == 7


async def test_expiry_removes_only_due_artifacts_and_digests_follow(store: Store) -> None:
    """Expired rows go (every tenant); the digests still referenced are what GC keeps."""
    await _tenants(store)
    await store.insert_artifact(A, art("a-1", digest="1" * 64, expires_at=NOW + 10))
    await store.insert_artifact(B, art("b-1", digest="2" * 64, expires_at=NOW + 100))
    await store.insert_artifact(B, art("b-2", digest="3" * 64))
    assert await store.artifact_digests_all_tenants() == {"1" * 64, "2" * 64, "3" * 64}
    assert await store.expire_artifacts_all_tenants(now=NOW + 50) == 1
    assert await store.get_artifact(A, "a-1") is None
    assert await store.artifact_digests_all_tenants() == {"2" * 64, "3" * 64}


async def test_tenant_has_digest_is_per_tenant(store: Store) -> None:
    """A digest known to tenant A is unknown to tenant B (dedupe never crosses tenants)."""
    await _tenants(store)
    await store.insert_artifact(A, art("a-1", digest="4" * 64))
    assert await store.tenant_has_digest(A, "4" * 64)
    assert not await store.tenant_has_digest(B, "4" * 64)
    assert not await store.tenant_has_digest(A, "5" * 64)

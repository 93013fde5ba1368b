"""The artifact-bytes figures of /metrics: read from the store at most once per max age,
shared by concurrent scrapes, and kept when a read fails."""

from __future__ import annotations

import asyncio

import pytest

from cortex.hub.http._store_metrics import ArtifactBytes


class _Sizes:
    """What a store answers: tenants and their bytes, with a count of the reads."""

    def __init__(self) -> None:
        self.sizes = {"acme": 10, "default": 0}
        self.calls = 0
        self.fail = False

    async def tenants(self) -> list[str]:
        self.calls += 1
        await asyncio.sleep(0)   # let a concurrent scrape in
        if self.fail:
            raise OSError("store down")
        return list(self.sizes)

    async def bytes_of(self, tenant: str) -> int:
        return self.sizes[tenant]


@pytest.mark.asyncio
async def test_reads_the_store_once_per_max_age() -> None:
    """Scrapes within max_age_s share one read; the next one after it reads again."""
    store, now = _Sizes(), [100.0]
    cache = ArtifactBytes(tenants=store.tenants, bytes_of=store.bytes_of,
                          mono=lambda: now[0], max_age_s=30.0)
    await asyncio.gather(cache.refresh(), cache.refresh(), cache.refresh())
    assert (cache.figures, store.calls) == ({"acme": 10, "default": 0}, 1)
    store.sizes["acme"] = 25
    now[0] += 29.9
    await cache.refresh()
    assert (cache.figures["acme"], store.calls) == (10, 1)
    now[0] += 0.2
    await cache.refresh()
    assert (cache.figures["acme"], store.calls) == (25, 2)


@pytest.mark.asyncio
async def test_a_failed_read_keeps_the_last_figures_and_retries_next_scrape() -> None:
    """A store error leaves the last figures in place and does not count as a read."""
    store, now = _Sizes(), [0.0]
    cache = ArtifactBytes(tenants=store.tenants, bytes_of=store.bytes_of,
                          mono=lambda: now[0], max_age_s=30.0)
    await cache.refresh()
    store.fail, now[0] = True, 31.0
    await cache.refresh()
    assert (cache.figures, cache.reads) == ({"acme": 10, "default": 0}, 1)
    store.fail = False
    await cache.refresh()
    assert (cache.reads, store.calls) == (2, 3)

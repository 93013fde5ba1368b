"""A 1 GiB file up and down through a real hub over loopback TLS, byte for byte, with the
process's RSS growth bounded (the 5 GiB round trip is in bench/bench_artifacts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from cortex.sdk import Client, ClientConfig
from cortex.testing import running_hub

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.timeout(300)]

GIB = 1024**3
# Hub and client share this process; the notes measured 50-70 MiB peak for a hub alone.
RSS_GROWTH_BOUND = 128 * 1024 * 1024


def generate(path: Path, size: int) -> str:
    block = bytearray(hashlib.sha256(b"seed").digest() * (1 << 15))   # 1 MiB
    h = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // len(block)):
            block[:8] = i.to_bytes(8, "little")     # no two blocks alike: no accidental dedupe
            f.write(block)
            h.update(block)
    return h.hexdigest()


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[list[int]]:
    """Samples this process's RSS every 50 ms; yields [baseline, peak]."""
    proc = psutil.Process()
    box = [proc.memory_info().rss, proc.memory_info().rss]

    async def sample() -> None:
        while True:
            box[1] = max(box[1], proc.memory_info().rss)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield box
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_one_gib_round_trip_is_byte_exact_with_bounded_memory(tmp_path: Path) -> None:
    """1 GiB uploads and downloads intact; RSS grows by less than 128 MiB meanwhile."""
    src = tmp_path / "big.bin"
    digest = await asyncio.to_thread(generate, src, GIB)
    async with running_hub(tmp_path / "hub") as hub:
        assert hub.ca is not None
        cfg = ClientConfig(address=hub.address, token=hub.admin_token, ca_pem=hub.ca.cert_pem)
        async with Client(cfg) as client, peak_rss() as rss:
            file = await client.upload_artifact(src)
            assert (file.size, file.sha256) == (GIB, digest)
            src.unlink()   # room for the copy
            back = await client.download_artifact(file, tmp_path / "back.bin")
        growth = rss[1] - rss[0]
        assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.0f} MiB"
        assert back.stat().st_size == GIB
        assert await asyncio.to_thread(lambda: _sha256(back)) == digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()

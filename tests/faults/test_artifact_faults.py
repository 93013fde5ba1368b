"""Artifact transfers survive a node killed mid-upload: the retry uploads the same output
again, resuming on the hub's part file, and the finished task lists a verified file."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cortex.sdk import TaskState

if TYPE_CHECKING:
    from conftest import Fleet

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

PY = sys.executable
QUICK_BEATS = ("--heartbeat-interval", "0.5")
SIZE = 256 * 1024 * 1024
# Writes the same SIZE bytes into argv[1] every time it runs (argv[2] is the fleet marker).
GENERATE = f"""\
import hashlib, sys
block = bytearray(hashlib.sha256(b"fault").digest() * 32768)
with open(sys.argv[1], "wb") as f:
    for i in range({SIZE // (1 << 20)}):
        block[:8] = i.to_bytes(8, "little")
        f.write(block)
"""


def expected_digest() -> str:
    block = bytearray(hashlib.sha256(b"fault").digest() * 32768)
    h = hashlib.sha256()
    for i in range(SIZE // (1 << 20)):
        block[:8] = i.to_bytes(8, "little")
        h.update(block)
    return h.hexdigest()


async def test_node_killed_mid_upload_resumes_on_the_retry(fleet: Fleet,
                                                           tmp_path: Path) -> None:
    """kill -9 of a node while it uploads a task's output: after its restart the retry
    sends the same output again, continuing the hub's part file (the upload id derives
    from the content), and the task ends SUCCEEDED with the file, byte for byte."""
    hub = await fleet.start_hub(*QUICK_BEATS)
    client = fleet.client(hub)
    n1, _ = await fleet.start_node(hub, client, "n1")
    work = tmp_path / "work"
    work.mkdir()
    task = await client.submit(argv=[PY, "-c", GENERATE, "big.bin", fleet.marker],
                               cwd=str(work), artifacts=["big.bin"], max_attempts=2)
    uploads = hub.data_dir / "artifacts" / "uploads"

    async def part_half_way() -> Path | None:
        parts = [p for p in uploads.glob("*.part") if p.stat().st_size > SIZE // 8]
        return parts[0] if parts else None

    part = await fleet.eventually(part_half_way, "the node's upload under way", within=60)
    n1.kill()
    assert part.exists(), "the hub dropped the part file of a broken upload"
    await fleet.restart_node(n1, client, "n1")
    done = await fleet.finished(client, task.id, within=120)
    assert (done.state, done.attempt) == (TaskState.SUCCEEDED, 2), done.reason
    digest = await asyncio.to_thread(expected_digest)
    [file] = done.files
    assert (file.name, file.size, file.sha256) == ("big.bin", SIZE, digest)
    back = await client.download_artifact(file, tmp_path / "back.bin")
    assert await asyncio.to_thread(lambda: hashlib.sha256(back.read_bytes()).hexdigest()) \
        == digest

"""Browser files as task artifacts, through a real hub (SQLite and Postgres), a real node
and real Chromium: screenshots, page downloads, uploads from an artifact, and a video whose
earlier fragments are on the hub although its worker was killed mid-recording."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import av
import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import pytest

from cortex.node.agent import Agent
from cortex.sdk import BrowserSession, Client, artifacts_of

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]


def browser_worker_pids() -> list[int]:
    me = psutil.Process()
    return [p.pid for p in me.children(recursive=True)
            if "cortex.workers" in " ".join(p.cmdline()) and "browser" in p.cmdline()]


def image_size(data: bytes, codec: str) -> tuple[int, int]:
    """Decode an image with FFmpeg (PyAV): (width, height); fails unless it is `codec`."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        frame = next(container.decode(stream))
        return frame.width, frame.height


async def login(browser: BrowserSession, site: str) -> None:
    await browser.navigate(f"{site}/login")
    await browser.type(None, "ann", selector="input[name=user]")
    await browser.type(None, "secret", selector="input[name=password]", submit=True)
    await browser.wait(url="**/app")


async def test_screenshot_download_and_upload_go_through_artifacts(
        client: Client, node: Agent, site: str, tmp_path: Path) -> None:
    """A screenshot is an image artifact of its task; a page download becomes an artifact;
    upload takes an artifact id and the page receives the file under its name."""
    browser = await BrowserSession.open(client, "files")
    try:
        await login(browser, site)
        shot = await browser.do("screenshot", format="jpeg", quality=50)
        [row] = artifacts_of(shot)
        assert row["media_type"] == "image/jpeg"
        assert row["name"].startswith("screenshots/")
        assert [f.artifact_id for f in await client.list_artifacts(row["task_id"])] == [
            row["artifact_id"]]
        assert image_size(await browser.read_artifact(row["artifact_id"]), "mjpeg")[0] > 100
        png = await browser.screenshot(max_bytes=0)  # too big to inline: from the hub
        assert image_size(png, "png")[0] > 100

        rows = artifacts_of(await browser.click(selector="text=Get report"))
        async with asyncio.timeout(20):  # the download may finish after the click
            while not any(r["name"].endswith("report.csv") for r in rows):
                rows += artifacts_of(await browser.do("logs", kinds=["download"], follow_s=0.2))
        report = next(r for r in rows if r["name"].endswith("report.csv"))
        got = await client.download_artifact(report["artifact_id"], tmp_path / "r.csv")
        assert got.read_text() == "id,total\n1,42\n"

        local = tmp_path / "invoice.txt"
        local.write_text("paid")
        stored = await client.upload_artifact(local, name="invoice.txt")
        answer = await browser.upload(selector="input[type=file]",
                                      artifacts=[stored.artifact_id])
        assert answer["files"][0].endswith("/invoice.txt")
        assert await browser.eval("document.getElementById('fname').textContent") == \
            "invoice.txt"
        with pytest.raises(Exception, match="no artifact"):
            await browser.upload(selector="input[type=file]", artifacts=["nope"])
    finally:
        await browser.close()


async def test_video_fragments_reach_the_hub_although_the_worker_is_killed(
        client: Client, node: Agent, site: str, tmp_path: Path) -> None:
    """kill -9 of the worker mid-recording: the fragments it wrote are an artifact of the
    task that started the recording; stopping lists every segment's artifact."""
    browser = await BrowserSession.open(client, "video", url=f"{site}/animate")
    try:
        started = await browser.record_start(fps=10, width=640, height=360)
        [streaming] = started["artifacts"]
        assert streaming["streaming"]
        segment = Path(started["recording"])
        async with asyncio.timeout(30):  # the first 2 s fragment is in the file
            while (await asyncio.to_thread(segment.stat)).st_size < 4096:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        on_disk = (await asyncio.to_thread(segment.stat)).st_size
        [pid] = browser_worker_pids()
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(20):
            while node._workers is not None and node._workers.statistics().crashed < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await browser.do("status")  # a new worker resumes: a new segment
        [first] = await client.list_artifacts(streaming["task_id"])
        assert first.media_type == "video/mp4"
        assert first.size >= on_disk
        local = await client.download_artifact(first, tmp_path / "first.mp4")
        with av.open(str(local)) as container:
            assert sum(1 for _ in container.decode(video=0)) > 0

        stopped = await browser.record_stop()
        rows = artifacts_of(stopped)
        assert len(rows) == 2
        assert rows[0]["task_id"] == streaming["task_id"]
        assert rows[0]["artifact_id"] == first.artifact_id
        saved = await browser.save_files(stopped, tmp_path / "video.mp4")
        assert [p.name for p in saved] == ["video-1.mp4", "video-2.mp4"]
        assert saved[0].read_bytes() == local.read_bytes()
    finally:
        await browser.close()

"""HAR and video recordings that outlive their worker.

A recording's settings and the files it wrote so far are kept in ``har.json`` /
``video.json`` in the session dir. A worker that attaches to a session whose recording was
running when the previous worker died starts a new segment with the same settings, so
killing the worker costs at most the unfinished part (the last video fragment; the HAR
entries still in the dead worker's memory). Stopping returns every segment: the HAR
segments merged into one file, the video segments as a list (each a playable MP4).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from cortex.workers.browser._args import ActionError
from cortex.workers.browser._driver import Driver
from cortex.workers.browser._outbox import publish

__all__ = ["har_start", "har_stop", "record_start", "record_stop", "resume"]


def _state(d: Driver, name: str) -> dict[str, Any] | None:
    try:
        value = json.loads((d.dir / name).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _save(d: Driver, name: str, state: dict[str, Any] | None) -> None:
    path = d.dir / name
    if state is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(state))


# --- HAR -----------------------------------------------------------------------------------

async def har_start(d: Driver, *, content: str, url_filter: str | None,
                    resumed: bool = False, task: bool = False) -> dict[str, Any]:
    """Start the session's HAR; with `task`, a HAR of one action (not resumed, not
    allowed while the session's own HAR records: the context has one HAR recorder)."""
    if task:
        if d.har is not None:
            raise ActionError("har=true needs the session's HAR stopped (har op=stop): "
                              "one HAR records at a time")
        path = d.dir / "har" / f"task-{time.time_ns()}.har"
        path.parent.mkdir(parents=True, exist_ok=True)
        await d.context.tracing.start_har(path, content="embed", mode="full")
        d.har = path
        return {"recording": str(path)}
    state = _state(d, "har.json")
    if state is not None and not resumed:
        raise ActionError("a HAR is already being recorded: stop it first (har op=stop)")
    state = state or {"content": content, "url_filter": url_filter, "segments": []}
    path = d.dir / "har" / f"{time.time_ns()}.har"
    path.parent.mkdir(parents=True, exist_ok=True)
    await d.context.tracing.start_har(
        path, content="embed" if state["content"] == "embed" else "omit", mode="full",
        url_filter=state["url_filter"])
    state["segments"].append(str(path))
    _save(d, "har.json", state)
    d.har = path
    return {"recording": str(path)}


async def har_stop(d: Driver, *, task: bool = False) -> dict[str, Any]:
    if task and d.har is not None:
        await d.context.tracing.stop_har()
        path, d.har = d.har, None
        publish(d.dir, "file", path, media_type="application/json")
        entries = len(json.loads(path.read_text())["log"]["entries"])
        return {"path": str(path), "bytes": path.stat().st_size, "entries": entries}
    state = _state(d, "har.json")
    if state is None or d.har is None:
        raise ActionError("no HAR is being recorded: har op=start first")
    await d.context.tracing.stop_har()
    d.har = None
    _save(d, "har.json", None)
    merged = await asyncio.to_thread(_merge, [Path(p) for p in state["segments"]])
    publish(d.dir, "file", merged, media_type="application/json")
    return {"path": str(merged), "bytes": merged.stat().st_size,
            "entries": len(json.loads(merged.read_text())["log"]["entries"]),
            "segments": len(state["segments"])}


def _merge(segments: list[Path]) -> Path:
    """One HAR with the entries (and pages) of every segment that was written."""
    base: dict[str, Any] | None = None
    for path in segments:
        try:
            har = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # the segment of a killed worker: never written
        if base is None:
            base = har
        else:
            base["log"]["entries"].extend(har["log"].get("entries", []))
            base["log"].setdefault("pages", []).extend(har["log"].get("pages", []))
    if base is None:
        base = {"log": {"version": "1.2", "creator": {"name": "cortex", "version": "1"},
                        "entries": []}}
    out = segments[-1].with_suffix(".merged.har") if len(segments) > 1 else segments[-1]
    out.write_text(json.dumps(base))
    return out


# --- video ---------------------------------------------------------------------------------

async def record_start(d: Driver, *, fps: int, width: int, height: int,
                       resumed: bool = False) -> dict[str, Any]:
    from cortex.workers.browser._video import Recorder  # PyAV loads only to record

    state = _state(d, "video.json")
    if state is not None and not resumed:
        raise ActionError("a video is already being recorded: stop it first (record op=stop)")
    if not (160 <= width <= 1920 and 120 <= height <= 1080 and width % 2 == 0
            and height % 2 == 0):
        raise ActionError("record: width x height must be even, from 160x120 up to 1920x1080")
    if not 1 <= fps <= 30:
        raise ActionError("record: fps must be from 1 to 30")
    state = state or {"fps": fps, "width": width, "height": height, "segments": []}
    page = await d.page()
    await page.set_viewport_size({"width": width, "height": height})
    path = d.dir / "video" / f"{time.time_ns()}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    cdp = await d.context.new_cdp_session(page)
    path.touch()  # the node streams it from now on; the encoder truncates an empty file
    publish(d.dir, "growing", path, media_type="video/mp4")
    d.recorder = Recorder(cdp, path, width=width, height=height, fps=fps)
    await d.recorder.start()
    state["segments"].append(str(path))
    _save(d, "video.json", state)
    return {"recording": str(path), "width": width, "height": height, "fps": fps}


async def record_stop(d: Driver) -> dict[str, Any]:
    state = _state(d, "video.json")
    if d.recorder is None or state is None:
        raise ActionError("no video is being recorded: record op=start first")
    recorder, d.recorder = d.recorder, None
    last = dict(await recorder.stop())
    _save(d, "video.json", None)
    publish(d.dir, "done")
    sizes = [(p, _size(Path(p))) for p in state["segments"]]
    segments = [{"path": p, "bytes": n} for p, n in sizes if n]
    # A worker killed before its encoder wrote the first fragment leaves no file.
    return {**last, "segments": segments, "lost_segments": len(sizes) - len(segments)}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def resume(d: Driver) -> list[str]:
    """Restart the recordings a dead worker left running; what happened, one line each.

    A recording that cannot go on (its tab crashed, a state file is damaged) is ended
    rather than failing every later action of the session.
    """
    notes = []
    if (har := _state(d, "har.json")) is not None:
        try:
            await har_start(d, content=har["content"], url_filter=har["url_filter"],
                            resumed=True)
            notes.append("resumed the HAR recording the previous worker left running "
                         "(a new segment)")
        except Exception as exc:  # noqa: BLE001 - reported; the session goes on without it
            _save(d, "har.json", None)
            notes.append(f"could not resume the HAR recording ({exc}); it was ended")
    if (video := _state(d, "video.json")) is not None:
        try:
            await record_start(d, fps=video["fps"], width=video["width"],
                               height=video["height"], resumed=True)
            notes.append("resumed the video recording the previous worker left running "
                         "(a new segment)")
        except Exception as exc:  # noqa: BLE001 - reported; the session goes on without it
            _save(d, "video.json", None)
            notes.append(f"could not resume the video recording ({exc}); it was ended")
    return notes

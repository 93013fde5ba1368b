"""A task's live log as Server-Sent Events, from the task manager's watch (the path the
gRPC `Watch` uses).

Each SSE message carries the task event's sequence number as its `id`, so a browser that
reconnects sends `Last-Event-ID` and the stream resumes after it. Messages:

    event: output   data: an HTML <span> of escaped text (class stdout/stderr/pty/system)
    event: state    data: an HTML badge of the new state (with its reason)
    event: end      data: the final state, once the task is finished and all is sent
                    (or "logged out" when the viewer's session or token ended meanwhile)

A comment line goes out every `KEEPALIVE_S` so proxies keep an idle stream open. The
viewer is checked again at each keepalive and at most every `RECHECK_S` while events
flow: a stream does not outlive a logout, a session's end or its token's revocation.
"""

from __future__ import annotations

import asyncio
import codecs
import html
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.states import State
from cortex.hub.tasks import TaskManager

__all__ = ["KEEPALIVE_S", "RECHECK_S", "OpenStreams", "format_event", "task_events"]

KEEPALIVE_S = 15.0
RECHECK_S = 5.0
ENDED = "logged out"   # the end message when the viewer may no longer see the stream
_RETRY_MS = 1000
_CLASSES = {pb.STDOUT: "stdout", pb.STDERR: "stderr", pb.PTY: "pty", pb.SYSTEM: "system"}


class OpenStreams:
    """How many streams are being sent right now, in all and by whom (an API token's id),
    counted from their first byte to their end, however they end: finished, client gone,
    hub closing, viewer logged out."""

    def __init__(self) -> None:
        self.now = 0
        self._by: dict[str, int] = {}

    def of(self, who: str) -> int:
        return self._by.get(who, 0)

    async def count(self, stream: AsyncIterator[str], who: str) -> AsyncIterator[str]:
        self.now += 1
        self._by[who] = self._by.get(who, 0) + 1
        try:
            async for chunk in stream:
                yield chunk
        finally:
            self.now -= 1
            self._by[who] -= 1
            if not self._by[who]:
                del self._by[who]


def task_events(tasks: TaskManager, tenant: str, task_id: str, *, after_seq: int,
                closing: asyncio.Event, streams: OpenStreams, who: str,
                allowed: Callable[[], Awaitable[bool]]) -> StreamingResponse:
    """The stream of one task's events after `after_seq`, counted in `streams` for `who`,
    for as long as `allowed()` (the viewer is still logged in) holds."""
    return StreamingResponse(
        streams.count(_stream(tasks, tenant, task_id, after_seq, closing, allowed), who),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(tasks: TaskManager, tenant: str, task_id: str, after_seq: int,
                  closing: asyncio.Event, allowed: Callable[[], Awaitable[bool]]
                  ) -> AsyncIterator[str]:
    yield f"retry: {_RETRY_MS}\n\n"
    checked = time.monotonic()
    decoders: dict[int, codecs.IncrementalDecoder] = {}
    # Bounded: a slow browser slows the pump (backpressure), nothing is dropped.
    queue: asyncio.Queue[pb.TaskEvent | None] = asyncio.Queue(maxsize=256)

    async def pump() -> None:
        async for ev in tasks.watch(tenant, task_id, after_seq=after_seq, follow=True):
            await queue.put(ev)
        await queue.put(None)

    feeder = asyncio.create_task(pump(), name=f"cortex-ui-watch-{task_id}")
    stop = asyncio.create_task(closing.wait())
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait([get, stop, feeder], timeout=KEEPALIVE_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                await asyncio.wait([get])
                if stop in done:
                    return   # the hub stops: the browser reconnects later, resuming
                if feeder in done and queue.empty():
                    feeder.result()   # the watch failed: raise its error
                    return
                if not await allowed():
                    yield _message("end", ENDED, None)
                    return
                checked = time.monotonic()
                yield ": keepalive\n\n"
                continue
            ev = get.result()
            if ev is None:
                break
            if time.monotonic() - checked >= RECHECK_S:
                if not await allowed():
                    yield _message("end", ENDED, None)
                    return
                checked = time.monotonic()
            yield format_event(ev, decoders)
        final = await tasks.get(tenant, task_id)
        yield _message("end", State(final.state).label, None)
    finally:
        for child in (feeder, stop):
            child.cancel()
        await asyncio.wait([feeder, stop])


def format_event(ev: pb.TaskEvent, decoders: dict[int, codecs.IncrementalDecoder]) -> str:
    """One SSE message for one task event (text decoded per stream, split UTF-8 kept)."""
    if ev.HasField("output"):
        stream = ev.output.stream
        decoder = decoders.setdefault(stream, codecs.getincrementaldecoder("utf-8")("replace"))
        text = _one_line(html.escape(decoder.decode(ev.output.data)))
        cls = _CLASSES.get(stream, "stdout")
        return _message("output", f'<span class="{cls}">{text}</span>', ev.seq)
    label = State(ev.state.state).label if ev.state.state else "unknown"
    reason = f" — {ev.state.reason}" if ev.state.reason else ""
    badge = (f'<span class="state state-{label}" data-state="{label}">{label}</span>'
             f'<span class="reason">{_one_line(html.escape(reason))}</span>')
    return _message("state", badge, ev.seq)


def _one_line(escaped: str) -> str:
    """Escaped HTML text with its line breaks as character references: one SSE data line,
    the same text in a <pre>."""
    return escaped.replace("\r", "&#13;").replace("\n", "&#10;")


def _message(event: str, data: str, seq: int | None) -> str:
    lines = [f"id: {seq}"] if seq is not None else []
    lines.append(f"event: {event}")
    lines.append(f"data: {_one_line(data)}")
    return "\n".join(lines) + "\n\n"

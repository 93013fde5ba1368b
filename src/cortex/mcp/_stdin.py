"""`StdinPipes`: one open Attach stream per interactive task the model writes to.

A stream opened and closed around each ``write_stdin`` call could be torn down before
the hub has read the bytes (nothing acknowledges stdin to a client), so each stream
stays open, in order, until its task ends, its input is closed (EOF) or the server stops.
A drain task per stream reads (and drops) the events, which the model reads with
``task_output``; it is owned here and awaited by `aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from cortex.errors import Conflict, CortexError, Unavailable
from cortex.sdk import Attachment, Client

__all__ = ["StdinPipes"]

MAX_PIPES = 64
"""Interactive tasks with an open stream at once; each holds one gRPC stream."""
WRITE_TIMEOUT_S = 20.0
"""How long a write may wait for a task that does not read its stdin."""


@dataclass
class _Pipe:
    attachment: Attachment
    drain: asyncio.Task[None]
    eof: bool = False


class StdinPipes:
    """Open Attach streams by task id; `write` opens one on first use."""

    def __init__(self, client: Client, *, limit: int = MAX_PIPES) -> None:
        self._client = client
        self._limit = limit
        self._pipes: dict[str, _Pipe] = {}
        self._opening = asyncio.Lock()  # two first writes must not open two streams
        self._closed = False

    async def write(self, task_id: str, data: bytes, *, eof: bool, after_seq: int) -> None:
        """Send `data` (then EOF if `eof`) to the task's stdin, in call order."""
        pipe = await self._pipe(task_id, after_seq)
        if pipe.eof:
            raise Conflict(f"stdin of task {task_id} is already closed (eof was sent)")
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await pipe.attachment.send_stdin(data)
                if eof:
                    pipe.eof = True
                    await pipe.attachment.close_stdin()
        except TimeoutError:
            await self._drop(task_id)
            raise Conflict(
                f"task {task_id} did not read its stdin within {WRITE_TIMEOUT_S:g} s, so "
                "part of the data may not have been delivered; check what it is doing with "
                "task_output, then write again"
            ) from None
        except CortexError:
            await self._drop(task_id)
            raise

    async def aclose(self) -> None:
        """Close every stream and await the drains (the tasks keep running)."""
        self._closed = True
        for task_id in list(self._pipes):
            await self._drop(task_id)

    async def _pipe(self, task_id: str, after_seq: int) -> _Pipe:
        async with self._opening:
            if self._closed:
                raise Unavailable("the MCP server is shutting down")
            pipe = self._pipes.get(task_id)
            if pipe is not None and not pipe.drain.done():
                return pipe
            if pipe is not None:
                await self._drop(task_id)
            if len(self._pipes) >= self._limit:
                raise Conflict(
                    f"{self._limit} interactive tasks already have their stdin open; send "
                    "eof=true to (or cancel) the ones you are done with"
                )
            attachment = self._client.attach(task_id, after_seq=after_seq)
            await attachment.__aenter__()
            drain = asyncio.create_task(self._drain(task_id, attachment),
                                        name=f"cortex-mcp-stdin-{task_id}")
            pipe = self._pipes[task_id] = _Pipe(attachment, drain)
            return pipe

    async def _drain(self, task_id: str, attachment: Attachment) -> None:
        # The stream answers with the task's events until it ends; nobody needs them here.
        with contextlib.suppress(CortexError):
            async for _ in attachment.events():
                pass
        if self._pipes.get(task_id) is not None and self._pipes[task_id].attachment is attachment:
            del self._pipes[task_id]
        await attachment.aclose()

    async def _drop(self, task_id: str) -> None:
        pipe = self._pipes.pop(task_id, None)
        if pipe is None:
            return
        pipe.drain.cancel()
        await asyncio.wait([pipe.drain])  # unlike `await`, leaves our own cancellation alone
        await pipe.attachment.aclose()

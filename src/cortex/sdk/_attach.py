"""`Attachment`: one bidirectional Attach stream to an interactive task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc

from cortex._proto.cortex.v1 import common_pb2, tasks_pb2
from cortex.errors import InvalidArgument
from cortex.sdk._errors import from_status, translate

if TYPE_CHECKING:
    AttachCall = grpc.aio.StreamStreamCall[tasks_pb2.AttachRequest, common_pb2.TaskEvent]

__all__ = ["Attachment"]


class Attachment:
    """Stdin and terminal size in, the task's events out (as `Client.watch` yields them).

    Use as ``async with client.attach(task_id) as att:``. Unlike `Client.watch` it does not
    reconnect: stdin is not idempotent, so a lost hub ends it with Unavailable.
    """

    def __init__(
        self,
        open_call: Callable[[], AttachCall],
        task_id: str,
        *,
        after_seq: int = 0,
        address: str = "",
    ) -> None:
        self._open_call = open_call
        self._call: AttachCall | None = None
        self._address = address
        self._write_lock = asyncio.Lock()  # grpc allows one write in flight per stream
        self.task_id = task_id
        self.after_seq = after_seq

    async def __aenter__(self) -> Self:
        self._call = self._open_call()
        try:
            await self._write(
                tasks_pb2.AttachRequest(task_id=self.task_id, after_seq=self.after_seq)
            )
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the stream; the task keeps running (cancel it with `Client.cancel`)."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def send_stdin(self, data: bytes) -> None:
        """Write `data` to the task's stdin (waits while the stream is full)."""
        if data:
            await self._write(tasks_pb2.AttachRequest(stdin=data))

    async def close_stdin(self) -> None:
        """Send EOF on the task's stdin; resizes still work afterwards."""
        await self._write(tasks_pb2.AttachRequest(eof=True))

    async def resize(self, rows: int, cols: int) -> None:
        """Change the task's terminal size (tasks run with pty=True)."""
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise InvalidArgument(f"terminal size must be positive, got {rows}x{cols}")
        await self._write(tasks_pb2.AttachRequest(rows=rows, cols=cols))

    async def events(self) -> AsyncGenerator[common_pb2.TaskEvent, None]:
        """The task's events from ``after_seq`` until the task is finished."""
        call = self._require_call()
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as e:
            raise translate(e, address=self._address) from e

    async def _write(self, request: tasks_pb2.AttachRequest) -> None:
        call = self._require_call()
        async with self._write_lock:
            try:
                await call.write(request)
            except grpc.aio.AioRpcError as e:
                raise translate(e, address=self._address) from e
            except asyncio.InvalidStateError:
                # The call already ended: the task finished, so its input no longer
                # matters, or the call failed, which is news worth raising here too.
                code = await call.code()
                if code != grpc.StatusCode.OK:
                    details = await call.details()
                    raise from_status(code, details, address=self._address) from None

    def _require_call(self) -> AttachCall:
        if self._call is None:
            raise RuntimeError("use the Attachment inside `async with client.attach(...)`")
        return self._call

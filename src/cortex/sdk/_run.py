"""`TaskService.Run` for the `Client`: the call's messages (sent again when it never reached
a hub) and the output they carry (the last attempt's kept, callbacks fed as it comes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

import grpc

from cortex import tracing
from cortex._proto.cortex.v1 import common_pb2, tasks_pb2
from cortex.sdk._errors import CONNECT_RETRY_S, never_sent, translate

if TYPE_CHECKING:
    from cortex._proto.cortex.v1.tasks_pb2_grpc import TaskServiceAsyncStub

__all__ = ["OldHub", "OutputCallback", "RunOutput", "run_messages"]

OutputCallback = Callable[[bytes], None]
_TO_STDOUT = frozenset({common_pb2.STDOUT, common_pb2.PTY})


async def run_messages(stub: TaskServiceAsyncStub, spec: common_pb2.TaskSpec, *,
                       metadata: tuple[tuple[str, str], ...], address: str
                       ) -> AsyncGenerator[tasks_pb2.RunResponse, None]:
    """TaskService.Run's messages, events batched; a call that never reached the hub is sent
    again. Raises `OldHub` when the hub predates Run (nothing was submitted)."""
    if parent := tracing.current_traceparent():
        metadata = (*metadata, ("traceparent", parent))
    for delay in (*CONNECT_RETRY_S, None):
        call = stub.Run(tasks_pb2.SubmitRequest(spec=spec, batch_events=True),
                        metadata=metadata)
        received = False
        try:
            async for msg in call:
                received = True
                yield msg
            return
        except grpc.aio.AioRpcError as e:
            if not received and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise OldHub from e
            if received or delay is None or not never_sent(e):
                raise translate(e, address=address) from e
        finally:
            call.cancel()
        await asyncio.sleep(delay)


class OldHub(Exception):
    """The hub does not serve TaskService.Run (it predates it)."""


class RunOutput:
    """A run's output as its events bring it: the last attempt's kept, callbacks fed."""

    def __init__(self, stdout: OutputCallback | None, stderr: OutputCallback | None) -> None:
        self.out, self.err = bytearray(), bytearray()
        self.attempt = self.last_seq = 0
        self._stdout, self._stderr = stdout, stderr

    def take(self, event: common_pb2.TaskEvent) -> None:
        if event.seq <= self.last_seq:
            return  # seen before a reconnect
        self.last_seq = event.seq
        if event.attempt > self.attempt:
            self.attempt = event.attempt
            self.out.clear()
            self.err.clear()
        if not event.HasField("output"):
            return
        data = event.output.data
        to_stdout = event.output.stream in _TO_STDOUT
        (self.out if to_stdout else self.err).extend(data)
        callback = self._stdout if to_stdout else self._stderr
        if callback is not None:
            callback(data)

"""One worker process of a stateful skill: its pipes, its current call, and its end.

Split from `worker.py` (the pool and the skill); the framed protocol is `_framing.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from google.protobuf import struct_pb2

from cortex import __version__
from cortex._proto.cortex.v1 import common_pb2, worker_pb2
from cortex.core.states import State
from cortex.errors import Unavailable
from cortex.skills._framing import PROTOCOL, FrameError, encode_frame, read_frame
from cortex.skills.base import OutputSink

log = logging.getLogger("cortex.skills.worker")

_STREAMS = (common_pb2.STDOUT, common_pb2.STDERR)
RESULT_STATES = {
    common_pb2.SUCCEEDED: State.SUCCEEDED,
    common_pb2.FAILED: State.FAILED,
    common_pb2.CANCELLED: State.CANCELLED,
}
_STDERR_CHUNK = 65536
_STDERR_TAIL = 2048  # bytes of a worker's stderr kept to explain a failed start
_STRAY_LOG_BYTES = 64 << 10  # output outside of calls logged per worker; the rest is counted
_LOG_BYTES = 1024  # bytes of one piece of output outside of a call that go to the log
_STDERR_BOUND_S = 1.0  # stderr may trail the worker's exit (a grandchild can hold it open)
_EXIT_BOUND_S = 30.0  # a process still there this long after SIGKILL is stuck in the kernel


@dataclass(frozen=True, slots=True)
class End:
    """How a call ended: the worker's result, or why the worker is gone."""

    result: worker_pb2.WorkerResult | None = None
    lost: str = ""


class Call:
    def __init__(self, call_id: int, sink: OutputSink) -> None:
        self.call_id = call_id
        self.sink = sink
        self.done: asyncio.Future[End] = asyncio.get_running_loop().create_future()

    def end(self, end: End) -> None:
        if not self.done.done():
            self.done.set_result(end)


class Worker:
    """One worker process: its pipes, the call it runs, and how it ended."""

    def __init__(self, proc: asyncio.subprocess.Process, *, skill: str, session_id: str,
                 grace_s: float) -> None:
        if proc.stdin is None or proc.stdout is None or proc.stderr is None:
            raise RuntimeError("a worker is spawned with stdin, stdout and stderr pipes")
        self.skill = skill
        self.session_id = session_id
        self.pid = proc.pid
        self._proc = proc
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._stderr = proc.stderr
        self._grace_s = grace_s
        self._loop = asyncio.get_running_loop()
        self.call: Call | None = None
        self.idle_since = self._loop.time()
        self.hello: asyncio.Future[str] = self._loop.create_future()  # "" or why not
        self.ended_by = ""  # set when the node ends the worker (not a crash)
        self.gone = ""  # once it is gone: "crashed (exit code 1)", "was idle ...", ...
        self.crashed = False
        self._stderr_tail = b""
        self._stray = 0  # bytes of output that came outside of any call
        self._kill_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        return f"{self.skill} worker {self.pid} (session {self.session_id!r})"

    @property
    def lost(self) -> str:
        """What a call in flight is told when the worker is gone (or going)."""
        return (f"the {self.skill} worker for session {self.session_id} "
                f"{self.gone or self.ended_by}; the session's state is gone")

    # --- the node's side of the protocol -----------------------------------------------

    async def ready(self, timeout_s: float) -> None:
        """Wait for the hello; Unavailable (the worker being killed) if it does not come."""
        try:
            async with asyncio.timeout(timeout_s):
                why = await asyncio.shield(self.hello)
        except TimeoutError:
            self.end(f"did not start within {timeout_s:g} s", kill=True)
            why = f"did not start within {timeout_s:g} s"
        except BaseException:
            self.end("was killed: the call that started it stopped waiting", kill=True)
            raise
        if why:
            raise Unavailable(f"the {self.skill} worker for session {self.session_id} {why}")

    async def send(self, call: Call, task_id: str, args: struct_pb2.Struct) -> None:
        """Start `call`; its end comes through `call.done` (also if the worker dies)."""
        request = worker_pb2.WorkerRequest(call_id=call.call_id, task_id=task_id, args=args)
        frame = encode_frame(request)  # InvalidArgument before the call is in flight
        if self.gone or self.ended_by:
            call.end(End(lost=self.lost))
            return
        self.call = call
        with contextlib.suppress(ConnectionError):  # a dead worker: its lifecycle ends the call
            self._stdin.write(frame)
            await self._stdin.drain()

    def interrupt(self, call_id: int) -> None:
        """Ask the worker to interrupt a call (it answers CANCELLED); returns at once."""
        if not self._stdin.is_closing():
            self._stdin.write(encode_frame(worker_pb2.WorkerRequest(call_id=call_id,
                                                                    cancel=True)))

    def end(self, why: str, *, kill: bool) -> None:
        """End the worker: `kill` at once, or close its input and let it exit, killed if
        it has not within the grace period. The first `why` stays; it completes "the
        pyeval worker for session S ..." in what the session's calls are told."""
        if self.gone:
            return
        self.ended_by = self.ended_by or why
        if kill:
            kill_group(self.pid)
            return
        if not self._stdin.is_closing():
            self._stdin.close()  # a worker exits at the end of its input
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(self._grace_s, kill_group, self.pid)

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the worker is gone, then reap it and end whatever it held."""
        stderr = asyncio.create_task(self._drain_stderr(), name=f"stderr of {self}")
        breach = ""
        try:
            try:
                while (reply := await read_frame(self._stdout,
                                                 worker_pb2.WorkerReply)) is not None:
                    self._on_reply(reply)
            except FrameError as exc:
                breach = str(exc)
            except OSError as exc:
                breach = f"its replies could not be read: {exc}"
            await self._finish(breach, stderr)
        except BaseException:  # cancelled: not done the normal way, but done all the same
            kill_group(self.pid)
            stderr.cancel()
            self.gone = self.gone or "was killed: its node is stopping"
            if not self.hello.done():
                self.hello.set_result(self.gone)
            if self.call is not None:
                self.call.end(End(lost=self.lost))
            raise

    def _on_reply(self, reply: worker_pb2.WorkerReply) -> None:
        kind = reply.WhichOneof("kind")
        if kind == "hello":
            self._on_hello(reply.hello)
        elif not self.hello.done():
            raise FrameError(f"sent {kind or 'an empty reply'} before its hello")
        elif kind == "output":
            self._on_output(reply.call_id, reply.output)
        elif kind == "result":
            self._on_result(reply.call_id, reply.result)
        else:
            raise FrameError("sent a reply with nothing in it")

    def _on_hello(self, hello: worker_pb2.WorkerHello) -> None:
        if self.hello.done():
            raise FrameError("sent a second hello")
        if hello.skill != self.skill:
            raise FrameError(f"serves skill {hello.skill!r}, not {self.skill!r}")
        if hello.protocol != PROTOCOL:
            raise FrameError(f"speaks worker protocol {hello.protocol}; this node speaks "
                             f"{PROTOCOL} (the worker runs cortex {hello.version})")
        if hello.version != __version__:
            log.warning("%s runs cortex %s, the node %s", self, hello.version, __version__)
        log.info("%s started", self)
        self.hello.set_result("")

    def _on_output(self, call_id: int, output: common_pb2.Output) -> None:
        if output.stream not in _STREAMS:
            raise FrameError(f"sent output on stream {output.stream}, not stdout or stderr")
        call = self.call
        if call is not None and call.call_id == call_id:
            call.sink(output.stream, output.data)
        else:  # a thread of the session printing between calls
            self._log_stray("output", output.data)

    def _on_result(self, call_id: int, result: worker_pb2.WorkerResult) -> None:
        call = self.call
        if call is None or call.call_id != call_id:
            raise FrameError(f"sent a result for call {call_id}, which is not running")
        if result.state not in RESULT_STATES:
            raise FrameError(f"ended call {call_id} in state {result.state}")
        self.call = None
        self.idle_since = self._loop.time()
        call.end(End(result=result))

    async def _drain_stderr(self) -> None:
        """fd-level output (subprocesses, C code, the worker's own errors) of the worker."""
        while chunk := await self._stderr.read(_STDERR_CHUNK):
            self._stderr_tail = (self._stderr_tail + chunk)[-_STDERR_TAIL:]
            call = self.call
            if call is not None:
                call.sink(common_pb2.STDERR, chunk)
            else:
                self._log_stray("stderr", chunk)

    def _log_stray(self, source: str, data: bytes) -> None:
        """No call to give it to: the log gets it, up to a bound per worker."""
        before, self._stray = self._stray, self._stray + len(data)
        if before < _STRAY_LOG_BYTES:
            log.info("%s, outside of a call, %s: %r", self, source, data[:_LOG_BYTES])
            if self._stray >= _STRAY_LOG_BYTES:
                log.info("%s: over %d bytes outside of calls; no more of it is logged",
                         self, _STRAY_LOG_BYTES)

    async def _finish(self, breach: str, stderr: asyncio.Task[None]) -> None:
        if breach:
            kill_group(self.pid)  # it talks nonsense: nothing it says can be trusted now
        code = await self._reap()
        kill_group(self.pid)  # what the session left running dies with it
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        done, _ = await asyncio.wait([stderr], timeout=_STDERR_BOUND_S)
        if not done:
            stderr.cancel()
            await asyncio.wait([stderr])
        if self.ended_by:
            self.gone = self.ended_by
        elif breach:
            self.gone, self.crashed = f"broke the protocol ({breach}) and was killed", True
        else:
            self.gone, self.crashed = f"crashed ({exit_text(code)})", True
        log.info("%s is gone: %s", self, self.gone)
        if not self.hello.done():
            self.hello.set_result(self._start_failure(code, breach))
        call, self.call = self.call, None
        if call is not None:
            call.end(End(lost=self.lost))

    def _start_failure(self, code: int | None, breach: str) -> str:
        if self.ended_by:
            return self.ended_by
        if breach:
            return f"did not start: it broke the protocol ({breach})"
        lines = self._stderr_tail.decode(errors="replace").strip().splitlines()
        detail = f": {lines[-1].strip()}" if lines else ""
        return f"did not start ({exit_text(code)}){detail}"

    async def _reap(self) -> int | None:
        """The exit status: after the grace period (a closing worker flushes its files),
        the group is killed; None if even SIGKILL does not end it (stuck in the kernel)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._grace_s):
                return await self._proc.wait()
        kill_group(self.pid)
        try:
            async with asyncio.timeout(_EXIT_BOUND_S):
                return await self._proc.wait()
        except TimeoutError:
            log.error("%s survived SIGKILL for %.0f s", self, _EXIT_BOUND_S)
            return None


def kill_group(pid: int) -> None:
    # The worker leads its own session and group (start_new_session), so its pid is the
    # group id; an unreaped or still-populated group keeps that id from being reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"

"""Stateful skills: long-lived worker processes, one per session, behind the Skill interface.

`WorkerPool` keeps one worker process per (skill, session id), started on the session's
first call with ``python -m cortex.workers SKILL`` (cortex.workers is the other end) in its
own session and process group, without a preexec_fn (a fork in a gRPC process aborts).
Each worker has one lifecycle task, owned by the pool, that reads its frames
(proto/cortex/v1/worker.proto) and, when the worker ends, reaps it and kills what is left
of its process group. `WorkerSkill` turns a task into one call in its session.

One call, start to end:

1. wait for the session's turn: calls of one session run one at a time, in order;
2. get the session's worker, starting one if needed (after a crash, an idle close or an
   eviction, the call's first output line says the session was reset);
3. send the call; output frames go to the sink as they come; the result frame ends it;
4. cancel or timeout: a cancel frame, on which the worker raises KeyboardInterrupt in the
   running code and answers CANCELLED, the session intact; no answer within the grace and
   the worker is killed, its session lost;
5. a worker that dies or breaks the protocol fails the call in flight, saying that the
   session's state is gone; the next call of the session starts a fresh worker.

Idle workers are closed after ``idle_timeout_s``; ``await pool.aclose()`` closes them all.
Worker processes are not in the node's task cgroups: a session outlives its tasks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from cortex import __version__
from cortex._proto.cortex.v1 import common_pb2, worker_pb2
from cortex.core.states import State
from cortex.errors import Conflict, CortexError, InvalidArgument, Unavailable
from cortex.skills._framing import PROTOCOL, FrameError, encode_frame, read_frame
from cortex.skills.base import Outcome, OutputSink, TaskRun

__all__ = ["PoolStatistics", "WorkerPool", "WorkerSkill"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (skill, session id)

_STOP_STATES = (State.CANCELLED, State.TIMED_OUT, State.FAILED)
_RESULT_STATES = {
    common_pb2.SUCCEEDED: State.SUCCEEDED,
    common_pb2.FAILED: State.FAILED,
    common_pb2.CANCELLED: State.CANCELLED,
}
_STREAMS = (common_pb2.STDOUT, common_pb2.STDERR)
_SKILL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ARGS_HINT = {"pyeval": ' {"code": "<python source>"}'}
_MAX_NOTES = 1024  # sessions remembered as reset, for the note on their next call
_STDERR_CHUNK = 65536
_STDERR_TAIL = 2048  # bytes of a worker's stderr kept to explain a failed start
_LOG_BYTES = 1024  # bytes of one piece of output outside of a call that go to the log
_STRAY_LOG_BYTES = 64 << 10  # output outside of calls logged per worker; the rest is counted
_EXIT_BOUND_S = 30.0  # a process still there this long after SIGKILL is stuck in the kernel
_STDERR_BOUND_S = 1.0  # stderr may trail the worker's exit (a grandchild can hold it open)


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    workers: int  # worker processes attached to a session, starting ones included
    busy: int  # of those, running a call
    started: int  # workers started since the pool was made
    crashed: int  # workers that died on their own or broke the protocol


@dataclass(frozen=True, slots=True)
class _End:
    """How a call ended: the worker's result, or why the worker is gone."""

    result: worker_pb2.WorkerResult | None = None
    lost: str = ""


class _Call:
    def __init__(self, call_id: int, sink: OutputSink) -> None:
        self.call_id = call_id
        self.sink = sink
        self.done: asyncio.Future[_End] = asyncio.get_running_loop().create_future()

    def end(self, end: _End) -> None:
        if not self.done.done():
            self.done.set_result(end)


class _Worker:
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
        self.call: _Call | None = None
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

    async def send(self, call: _Call, task_id: str, args: struct_pb2.Struct) -> None:
        """Start `call`; its end comes through `call.done` (also if the worker dies)."""
        request = worker_pb2.WorkerRequest(call_id=call.call_id, task_id=task_id, args=args)
        frame = encode_frame(request)  # InvalidArgument before the call is in flight
        if self.gone or self.ended_by:
            call.end(_End(lost=self.lost))
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
            _kill_group(self.pid)
            return
        if not self._stdin.is_closing():
            self._stdin.close()  # a worker exits at the end of its input
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(self._grace_s, _kill_group, self.pid)

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
            _kill_group(self.pid)
            stderr.cancel()
            self.gone = self.gone or "was killed: its node is stopping"
            if not self.hello.done():
                self.hello.set_result(self.gone)
            if self.call is not None:
                self.call.end(_End(lost=self.lost))
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
        if result.state not in _RESULT_STATES:
            raise FrameError(f"ended call {call_id} in state {result.state}")
        self.call = None
        self.idle_since = self._loop.time()
        call.end(_End(result=result))

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
            _kill_group(self.pid)  # it talks nonsense: nothing it says can be trusted now
        code = await self._reap()
        _kill_group(self.pid)  # what the session left running dies with it
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
            self.gone, self.crashed = f"crashed ({_exit_text(code)})", True
        log.info("%s is gone: %s", self, self.gone)
        if not self.hello.done():
            self.hello.set_result(self._start_failure(code, breach))
        call, self.call = self.call, None
        if call is not None:
            call.end(_End(lost=self.lost))

    def _start_failure(self, code: int | None, breach: str) -> str:
        if self.ended_by:
            return self.ended_by
        if breach:
            return f"did not start: it broke the protocol ({breach})"
        lines = self._stderr_tail.decode(errors="replace").strip().splitlines()
        detail = f": {lines[-1].strip()}" if lines else ""
        return f"did not start ({_exit_text(code)}){detail}"

    async def _reap(self) -> int | None:
        """The exit status: after the grace period (a closing worker flushes its files),
        the group is killed; None if even SIGKILL does not end it (stuck in the kernel)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._grace_s):
                return await self._proc.wait()
        _kill_group(self.pid)
        try:
            async with asyncio.timeout(_EXIT_BOUND_S):
                return await self._proc.wait()
        except TimeoutError:
            log.error("%s survived SIGKILL for %.0f s", self, _EXIT_BOUND_S)
            return None


class _Session:
    def __init__(self, key: Key) -> None:
        self.key = key
        self.lock = asyncio.Lock()  # FIFO: the session's calls run in the order they came
        self.users = 0  # the call holding the lock and those waiting for it
        self.worker: _Worker | None = None


class WorkerPool:
    """Worker processes by (skill, session id); see the module docstring."""

    def __init__(
        self,
        *,
        python: str = sys.executable,
        idle_timeout_s: float = 900.0,
        max_workers: int = 16,
        start_timeout_s: float = 30.0,
        cancel_grace_s: float = 2.0,
    ) -> None:
        for name, value in (("idle_timeout_s", idle_timeout_s),
                            ("start_timeout_s", start_timeout_s),
                            ("cancel_grace_s", cancel_grace_s)):
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgument(f"{name} must be > 0 seconds, got {value}")
        if max_workers < 1:
            raise InvalidArgument(f"max_workers must be at least 1, got {max_workers}")
        self._python = python
        self._idle_timeout_s = idle_timeout_s
        self._max_workers = max_workers
        self._start_timeout_s = start_timeout_s
        self._cancel_grace_s = cancel_grace_s
        self._sessions: dict[Key, _Session] = {}
        self._notes: collections.OrderedDict[Key, str] = collections.OrderedDict()
        self._workers: set[_Worker] = set()  # every worker whose lifecycle task still runs
        self._starting = 0
        self._call_ids = itertools.count(1)
        self._changed = asyncio.Event()  # wakes the idle reaper
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._started = 0
        self._crashed = 0

    def statistics(self) -> PoolStatistics:
        attached = [s.worker for s in self._sessions.values() if s.worker is not None]
        return PoolStatistics(
            workers=len(attached) + self._starting,
            busy=sum(1 for w in attached if w.call is not None),
            started=self._started,
            crashed=self._crashed,
        )

    async def aclose(self) -> None:
        """Close every worker (a call in flight is interrupted) and wait until all are gone."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait([self._reaper])
        for session in list(self._sessions.values()):
            self._detach(session, "was closed: the node is shutting down", note=False)
        for worker in list(self._workers):
            worker.end("was closed: the node is shutting down", kill=False)
        while self._workers:
            await asyncio.wait([w.task for w in self._workers if w.task is not None])

    # --- for runs ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the worker pool is closed: the node is shutting down")

    def _join(self, key: Key) -> _Session:
        self._check_open()
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session(key)
        session.users += 1
        return session

    def _leave(self, session: _Session) -> None:
        session.users -= 1
        self._forget_if_unused(session)
        self._changed.set()  # an idle clock may have started

    def _pid_of(self, key: Key) -> int | None:
        session = self._sessions.get(key)
        worker = session.worker if session is not None else None
        return worker.pid if worker is not None and not worker.gone else None

    async def _worker_for(self, session: _Session) -> tuple[_Worker, str]:
        """The session's live worker, started if needed, and the note its call shows first
        ("" unless the session was reset). The caller holds the session's lock."""
        worker = session.worker
        if worker is not None and not worker.gone and not worker.ended_by:
            return worker, ""
        self._check_open()
        self._make_room()
        self._starting += 1
        try:
            worker = await self._spawn(*session.key)
        finally:
            self._starting -= 1
        if self._closed:
            worker.end("was closed: the node is shutting down", kill=True)
            self._check_open()
        session.worker = worker
        return worker, self._notes.pop(session.key, "")

    async def _spawn(self, skill: str, session_id: str) -> _Worker:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._python, "-m", "cortex.workers", skill,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own group: signals and kills reach its tree only
            )
        except OSError as exc:
            raise Unavailable(f"cannot start the {skill} worker with {self._python}: "
                              f"{exc.strerror or exc}") from exc
        worker = _Worker(proc, skill=skill, session_id=session_id, grace_s=self._cancel_grace_s)
        self._started += 1
        self._workers.add(worker)
        worker.task = asyncio.create_task(self._lifecycle(worker), name=str(worker))
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="idle worker reaper")
        await worker.ready(self._start_timeout_s)
        return worker

    async def _lifecycle(self, worker: _Worker) -> None:
        try:
            await worker.run()
        finally:
            self._workers.discard(worker)
            self._crashed += worker.crashed
            session = self._sessions.get((worker.skill, worker.session_id))
            if session is not None and session.worker is worker:  # it died while in use
                self._detach(session, worker.gone, note=True)
            self._changed.set()

    def _make_room(self) -> None:
        """Close the least recently used idle worker if the pool is full."""
        attached = [s for s in self._sessions.values() if s.worker is not None]
        if len(attached) + self._starting < self._max_workers:
            return
        idle = [s for s in attached if s.users == 0]
        if not idle:
            raise Unavailable(
                f"all {self._max_workers} worker slots of this node are busy; retry when a "
                "session's call ends, or raise the node's max_workers"
            )
        victim = min(idle, key=lambda s: s.worker.idle_since if s.worker else 0.0)
        self._detach(victim, "was closed to make room for another session "
                             f"(max_workers={self._max_workers})", note=True)

    def _detach(self, session: _Session, why: str, *, note: bool) -> None:
        """Take the session's worker away (ending it) and remember why, for its next call."""
        worker, session.worker = session.worker, None
        if worker is None:
            return
        worker.end(why, kill=False)
        if note:
            skill, sid = session.key
            self._notes[session.key] = (f"[{skill} session {sid} was reset: its worker {why}; "
                                        "earlier state is gone]\n")
            self._notes.move_to_end(session.key)
            while len(self._notes) > _MAX_NOTES:
                self._notes.popitem(last=False)
        self._forget_if_unused(session)

    def _forget_if_unused(self, session: _Session) -> None:
        unused = session.users == 0 and session.worker is None
        if unused and self._sessions.get(session.key) is session:
            del self._sessions[session.key]

    async def _reap_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now, wake_at = loop.time(), math.inf
            for session in list(self._sessions.values()):
                worker = session.worker
                if worker is None or session.users:
                    continue
                due = worker.idle_since + self._idle_timeout_s
                if due <= now:
                    self._detach(session, f"was idle for {self._idle_timeout_s:g} s and was "
                                          "closed", note=True)
                else:
                    wake_at = min(wake_at, due)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(None if wake_at == math.inf else wake_at):
                    await self._changed.wait()


class WorkerSkill:
    """A skill whose tasks are calls in a session's worker process (`WorkerPool`)."""

    def __init__(self, name: str, pool: WorkerPool) -> None:
        if not _SKILL_NAME.match(name):
            raise InvalidArgument(f"{name!r} is not a skill name (lowercase, up to 32 chars)")
        self.name = name
        self.pool = pool

    async def start(
        self,
        *,
        task_id: str,
        attempt: int,
        spec: common_pb2.TaskSpec,
        timeout_s: float | None,
        sink: OutputSink,
    ) -> TaskRun:
        """Queue the call in its session; InvalidArgument for a spec the skill cannot run."""
        if not spec.session_id:
            raise InvalidArgument(
                f"the {self.name} skill needs a session id (cortex run --session NAME)")
        if not spec.args.fields:
            raise InvalidArgument(
                f"the {self.name} skill needs args{_ARGS_HINT.get(self.name, '')}")
        if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
            raise InvalidArgument(f"timeout_s must be > 0 seconds or None, got {timeout_s}")
        self.pool._check_open()
        return _WorkerRun(self.pool, (self.name, spec.session_id), task_id=task_id,
                          args=spec.args, timeout_s=timeout_s, sink=sink)


class _WorkerRun:
    """One call in a session's worker; implements TaskRun."""

    def __init__(self, pool: WorkerPool, key: Key, *, task_id: str, args: struct_pb2.Struct,
                 timeout_s: float | None, sink: OutputSink) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = pool
        self._key = key
        self._task_id = task_id
        self._args = struct_pb2.Struct()
        self._args.CopyFrom(args)
        self._sink = sink
        self.pid: int | None = pool._pid_of(key)  # the worker's, once known
        self._live = True  # the sink may be called (TaskRun: never after wait() resolves)
        self._sink_error = ""
        self._stop: tuple[State, str] | None = None
        self._stopped: asyncio.Future[None] = self._loop.create_future()
        self._scope: asyncio.Timeout | None = None
        self._timer: asyncio.TimerHandle | None = None
        if timeout_s is not None:
            # float() and round(): "5.0 s" for an int 5, "299.873 s" for a computed remainder.
            reason = f"timed out after {round(float(timeout_s), 3)} s"
            self._timer = self._loop.call_later(timeout_s, self.cancel, State.TIMED_OUT, reason)
        self._task = self._loop.create_task(self._lifecycle(), name=f"{key[0]} {task_id}")

    # --- TaskRun ---------------------------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        raise Conflict(f"{self._key[0]} tasks take no stdin: pass the input in the task's args")

    def close_stdin(self) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass

    def cancel(self, state: State = State.CANCELLED, reason: str = "") -> None:
        if state not in _STOP_STATES:
            raise InvalidArgument(
                f"a run stops as cancelled, timed_out or failed, not {state.label}")
        if self._stop is not None or self._task.done():
            return
        self._stop = (state, reason or state.label.replace("_", " "))
        self._stopped.set_result(None)
        if self._scope is not None:
            self._scope.reschedule(self._loop.time())  # stop waiting for the turn / the start

    async def wait(self) -> Outcome:
        # Shielded: a caller giving up on waiting must not abort the cancel-and-kill sequence.
        return await asyncio.shield(self._task)

    # --- lifecycle ---------------------------------------------------------------------

    async def _lifecycle(self) -> Outcome:
        try:
            return await self._run()
        except CortexError as exc:
            return Outcome(State.FAILED, None, str(exc))
        finally:
            self._live = False
            if self._timer is not None:
                self._timer.cancel()

    async def _run(self) -> Outcome:
        session = self._pool._join(self._key)
        locked = False
        try:
            try:
                async with asyncio.timeout(None) as scope:
                    self._scope = scope
                    if self._stop is not None:
                        return self._stopped_outcome()
                    await session.lock.acquire()
                    locked = True
                    worker, note = await self._pool._worker_for(session)
            except TimeoutError:
                if not scope.expired():
                    raise
                return self._stopped_outcome()
            finally:
                self._scope = None
            self.pid = worker.pid
            if note:
                self._deliver(common_pb2.STDERR, note.encode())
            if self._stop is not None:
                return self._stopped_outcome()
            return self._outcome(await self._call(worker))
        finally:
            if locked:
                session.lock.release()
            self._pool._leave(session)

    async def _call(self, worker: _Worker) -> _End:
        call = _Call(next(self._pool._call_ids), self._deliver)
        try:
            await worker.send(call, self._task_id, self._args)
            either: list[asyncio.Future[Any]] = [call.done, self._stopped]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if call.done.done():
                return call.done.result()
            worker.interrupt(call.call_id)
            grace = self._pool._cancel_grace_s
            await asyncio.wait([call.done], timeout=grace)
            if not call.done.done():
                worker.end(f"did not stop within {grace:g} s of the cancel and was killed",
                           kill=True)
            return await call.done
        except BaseException:
            if worker.call is call:  # abandoned in flight: the session cannot be trusted
                worker.call = None
                worker.end("was killed: its call was abandoned", kill=True)
            raise

    def _deliver(self, stream: int, data: bytes) -> None:
        if not self._live or self._sink_error:
            return
        try:
            self._sink(stream, data)
        except Exception as exc:  # the agent's sink failing ends this task, not the loop
            log.exception("output sink of a %s call failed; cancelling it", self._key[0])
            self._sink_error = f"output sink failed: {exc!r}"
            self.cancel(State.FAILED, self._sink_error)

    def _stopped_outcome(self) -> Outcome:
        state, reason = self._stop or (State.CANCELLED, "cancelled")
        return Outcome(state, None, reason)

    def _outcome(self, end: _End) -> Outcome:
        if self._sink_error:
            return Outcome(State.FAILED, None, self._sink_error)
        if end.lost:
            if self._stop is not None:
                return Outcome(self._stop[0], None, f"{self._stop[1]}; {end.lost}")
            return Outcome(State.FAILED, None, end.lost)
        result = end.result or worker_pb2.WorkerResult(state=common_pb2.FAILED)
        state = _RESULT_STATES[result.state]
        if state is State.CANCELLED and self._stop is not None:
            return self._stopped_outcome()  # the interrupt we asked for (e.g. TIMED_OUT)
        if state is State.SUCCEEDED:
            return Outcome(state, None)
        return Outcome(state, None, result.error or state.label)


def _kill_group(pid: int) -> None:
    # The worker leads its own session and group (start_new_session), so its pid is the
    # group id; an unreaped or still-populated group keeps that id from being reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"

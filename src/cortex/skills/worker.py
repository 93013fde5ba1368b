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
import re
import sys
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from cortex._proto.cortex.v1 import common_pb2, worker_pb2
from cortex.core.states import State
from cortex.errors import Conflict, CortexError, InvalidArgument, Unavailable
from cortex.skills._worker_process import (
    RESULT_STATES,
    Call,
    End,
    Worker,
)
from cortex.skills.base import Outcome, OutputSink, TaskRun

__all__ = ["PoolStatistics", "WorkerPool", "WorkerSkill"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (skill, session id)

_STOP_STATES = (State.CANCELLED, State.TIMED_OUT, State.FAILED)
_SKILL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ARGS_HINT = {"pyeval": ' {"code": "<python source>"}'}
_MAX_NOTES = 1024  # sessions remembered as reset, for the note on their next call


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    workers: int  # worker processes attached to a session, starting ones included
    busy: int  # of those, running a call
    started: int  # workers started since the pool was made
    crashed: int  # workers that died on their own or broke the protocol


class _Session:
    def __init__(self, key: Key) -> None:
        self.key = key
        self.lock = asyncio.Lock()  # FIFO: the session's calls run in the order they came
        self.users = 0  # the call holding the lock and those waiting for it
        self.worker: Worker | None = None


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
        self._workers: set[Worker] = set()  # every worker whose lifecycle task still runs
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

    async def _worker_for(self, session: _Session) -> tuple[Worker, str]:
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

    async def _spawn(self, skill: str, session_id: str) -> Worker:
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
        worker = Worker(proc, skill=skill, session_id=session_id, grace_s=self._cancel_grace_s)
        self._started += 1
        self._workers.add(worker)
        worker.task = asyncio.create_task(self._lifecycle(worker), name=str(worker))
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="idle worker reaper")
        await worker.ready(self._start_timeout_s)
        return worker

    async def _lifecycle(self, worker: Worker) -> None:
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

    async def _call(self, worker: Worker) -> End:
        call = Call(next(self._pool._call_ids), self._deliver)
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

    def _outcome(self, end: End) -> Outcome:
        if self._sink_error:
            return Outcome(State.FAILED, None, self._sink_error)
        if end.lost:
            if self._stop is not None:
                return Outcome(self._stop[0], None, f"{self._stop[1]}; {end.lost}")
            return Outcome(State.FAILED, None, end.lost)
        result = end.result or worker_pb2.WorkerResult(state=common_pb2.FAILED)
        state = RESULT_STATES[result.state]
        if state is State.CANCELLED and self._stop is not None:
            return self._stopped_outcome()  # the interrupt we asked for (e.g. TIMED_OUT)
        if state is State.SUCCEEDED:
            return Outcome(state, None)
        return Outcome(state, None, result.error or state.label)

"""One shell task run (`ShellRun`): exec a command, stream its output live, end only when
its tree is gone.

One run, start to end:

1. spawn: `subprocess.Popen` with ``start_new_session=True`` (own session and process
   group), no shell and never a ``preexec_fn``, so CPython keeps its vfork fast path and no
   fork handler (gRPC's aborts children) runs; PTY runs go through setsid(1) to adopt
   their terminal. The child is born inside its cgroup (the agent steps into the group around the
   fork: `begin_spawn`), so not even a grandchild forked at once escapes. A pidfd tells us
   when the child exits *without reaping it*, so its pid (and so its process group id)
   cannot be reused while we still signal them.
2. run: stdout/stderr (or the PTY master) feed the sink chunk by chunk as they arrive.
3. stop, when asked (cancel, timeout): SIGTERM the group, give it ``kill_grace_s``.
4. kill the rest, always: when the leader has exited, or the grace ran out, everything left
   in the tree gets SIGKILL (cgroup, process group, and a /proc walk where needed).
5. wait until every process is gone and the output pipes reached EOF, reap the leader,
   remove the cgroup, and only then resolve `wait()`.

So a task is over when its main process is: background jobs it left behind are killed,
as a CI runner does at the end of a job.

Without a cgroup the /proc walk is the net: it finds the leader's descendants, its process
group and session, SIGSTOPs them until no new one appears, then SIGKILLs them. What it
cannot find is a process that left both group and session *and* lost its parent chain to
the leader before the walk ran (a double-forked daemon); only a cgroup catches those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.errors import Conflict, CortexError, InvalidArgument, NotFound
from cortex.skills._shellproc import (
    Launch,
    Pid,
    check_executable,
    is_alive,
    is_eio,
    leave_cgroup,
    process_tree,
    set_winsize,
    signal_each,
    signal_group,
    stop_and_kill,
)
from cortex.skills.base import MAX_PENDING_STDIN, Outcome, OutputSink, TaskCgroup

__all__ = ["ShellRun"]

log = logging.getLogger("cortex.skills.shell")

_DEFAULT_ROWS, _DEFAULT_COLS = 24, 80
_EOT = b"\x04"  # ^D: end of input for a terminal in canonical mode
# A process still alive this long after SIGKILL is stuck in the kernel (D state): report it
# and leave the cgroup for kill_stale() rather than hang the task forever.
_GONE_BOUND_S = 30.0
# Output may trail the tree's death by this much; longer means a process outside the tree
# (one that escaped before it was placed) holds the pipe open.
_DRAIN_BOUND_S = 2.0
_STOP_STATES = (State.CANCELLED, State.TIMED_OUT, State.FAILED)


class ShellRun:
    """One spawned process tree; implements TaskRun."""

    def __init__(
        self,
        *,
        launch: Launch,
        sink: OutputSink,
        cgroup: TaskCgroup | None,
        kill_grace_s: float,
        read_chunk: int,
        timeout_s: float | None,
        setsid: str | None,
    ) -> None:
        self.pid: int | None = None
        self._setsid = setsid
        self._launch = launch
        self._sink = sink
        self._cgroup = cgroup
        self._kill_grace_s = kill_grace_s
        self._read_chunk = read_chunk
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._master = -1  # PTY master, kept for TIOCSWINSZ
        self._stdin: asyncio.WriteTransport | None = None
        self._readers: list[asyncio.ReadTransport] = []
        self._open_streams = 0
        self._output_done = asyncio.Event()
        self._exited = asyncio.Event()
        self._wake = asyncio.Event()  # exit or stop request
        self._stop: tuple[State, str] | None = None
        self._sink_error = ""
        self._contained = False  # born inside its cgroup, so the group holds the whole tree
        self._known: set[Pid] = set()  # tree snapshot taken before SIGTERM
        self._killed: set[Pid] = set()
        self._returncode: int | None = None
        self._reaped = False
        self._reap_note = ""
        self._task: asyncio.Task[Outcome] | None = None

    # --- TaskRun ---------------------------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        stdin = self._stdin
        if stdin is None or stdin.is_closing():
            raise Conflict("the task's stdin is closed (start it with interactive=true to write)")
        pending = stdin.get_write_buffer_size()
        if pending + len(data) > MAX_PENDING_STDIN:
            raise InvalidArgument(
                f"stdin backlog would reach {pending + len(data)} bytes, over the "
                f"{MAX_PENDING_STDIN}-byte bound: the process is not reading; retry later"
            )
        stdin.write(data)

    def close_stdin(self) -> None:
        stdin = self._stdin
        if stdin is None or stdin.is_closing():
            return
        if self._launch.pty:
            stdin.write(_EOT)  # a terminal has no "close": ^D is how a user ends input
        else:
            stdin.close()  # after the backlog is flushed

    def resize(self, rows: int, cols: int) -> None:
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise InvalidArgument(f"terminal size must be 1-65535 each, got {rows}x{cols}")
        if self._master >= 0:
            # The kernel sends SIGWINCH to the terminal's foreground process group itself
            # (which, under a job-control shell, is the running job, not our leader).
            set_winsize(self._master, rows, cols)

    def cancel(self, state: State = State.CANCELLED, reason: str = "") -> None:
        if state not in _STOP_STATES:
            raise InvalidArgument(
                f"a run stops as cancelled, timed_out or failed, not {state.label}"
            )
        if self._stop is not None or self._exited.is_set():
            return  # idempotent; and a task whose leader already exited has its verdict
        self._stop = (state, reason or state.label.replace("_", " "))
        self._wake.set()

    async def wait(self) -> Outcome:
        if self._task is None:
            raise RuntimeError("wait() before connect()")
        # Shielded: a caller giving up on waiting must not abort the kill-and-reap sequence.
        return await asyncio.shield(self._task)

    # --- spawn -------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process (raises OSError when it cannot be exec'd)."""
        # Born inside the cgroup: placing the pid after spawn loses a real race (`sh -c
        # '(setsid daemon &)'` forked before the write in ~1 of 5 runs here).
        inside = self._enter_cgroup()
        try:
            self._proc = self._spawn_pty() if self._launch.pty else self._spawn_pipes()
        finally:
            if inside is not None:
                leave_cgroup(inside)
        self.pid = self._proc.pid
        self._contained = inside is not None
        if self._cgroup is not None and inside is None:
            self._place(self.pid)  # second best: racy, the /proc walk at kill is the backup
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # out of file descriptors: a process we cannot watch must not run
            self._kill_now()
            self._proc.wait()
            raise
        self._loop.add_reader(self._pidfd, self._on_exit)

    def _spawn_pipes(self) -> subprocess.Popen[bytes]:
        launch = self._launch
        return subprocess.Popen(  # noqa: S603 - running the user's command is the point
            launch.argv,
            stdin=subprocess.PIPE if launch.interactive or launch.stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=launch.cwd,
            env=launch.env,
            start_new_session=True,
            bufsize=0,
        )

    def _spawn_pty(self) -> subprocess.Popen[bytes]:
        launch, argv = self._launch, self._launch.argv
        if self._setsid is not None:
            # The tty must be adopted (TIOCSCTTY) after setsid(), in the child. Not with a
            # preexec_fn: that forces fork(), which runs gRPC's fork handlers in the child,
            # and those abort it (SIGABRT in 12 of 30 PTY tasks under the node agent).
            # setsid(1) does both and execs the command: same pid, one extra exec.
            check_executable(launch)  # setsid(1) would only exit 127 or 126
            argv = [self._setsid, "--ctty", "--", *argv]
        master, slave = os.openpty()
        try:
            set_winsize(master, launch.rows, launch.cols)
            proc = subprocess.Popen(  # noqa: S603 - running the user's command is the point
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=launch.cwd,
                env=launch.env,
                # setsid(1) must not be a group leader, or it forks to call setsid().
                start_new_session=self._setsid is None,
                bufsize=0,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # else the master never sees EIO when the child side closes
        self._master = master
        return proc

    def _enter_cgroup(self) -> TaskCgroup | None:
        """The group the next spawn will be born in, if entering it worked."""
        if self._cgroup is None:
            return None
        try:
            self._cgroup.begin_spawn()
        except CortexError as exc:
            log.warning("cannot spawn inside %s, placing after: %s", self._cgroup, exc)
            return None
        return self._cgroup

    def _place(self, pid: int) -> None:
        if self._cgroup is None:
            return
        try:
            self._cgroup.add(pid)
        except NotFound:
            pass  # already exited: nothing to contain
        except CortexError as exc:
            log.warning("pid %s stays outside %s: %s", pid, self._cgroup, exc)

    async def connect(self) -> None:
        """Wire output and stdin to the loop and start the lifecycle task."""
        try:
            await self._connect_streams()
        except BaseException:
            self._kill_now()
            self._reap_now()
            self._release()
            raise
        self._task = self._loop.create_task(self._lifecycle(), name=f"shell pid {self.pid}")

    async def _connect_streams(self) -> None:
        proc, launch, loop = self._proc, self._launch, self._loop
        if proc is None:
            raise RuntimeError("connect() before spawn()")
        if launch.pty:
            reader = os.fdopen(os.dup(self._master), "rb", buffering=0)
            writer = os.fdopen(os.dup(self._master), "wb", buffering=0)
            await self._connect_reader(reader, common_pb2.PTY)
            self._stdin, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, writer)
        else:
            await self._connect_reader(proc.stdout, common_pb2.STDOUT)
            await self._connect_reader(proc.stderr, common_pb2.STDERR)
            if proc.stdin is not None:
                self._stdin, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, proc.stdin)
        if self._stdin is not None:
            self._feed_initial_stdin(self._stdin)

    async def _connect_reader(self, pipe: object, stream: int) -> None:
        transport, _ = await self._loop.connect_read_pipe(lambda: _Reader(self, stream), pipe)
        self._readers.append(transport)
        self._open_streams += 1

    def _feed_initial_stdin(self, stdin: asyncio.WriteTransport) -> None:
        launch = self._launch
        if launch.stdin:
            stdin.write(launch.stdin)
        if launch.interactive:
            return
        if not launch.pty:
            stdin.close()
        elif launch.stdin and not launch.stdin.endswith(b"\n"):
            stdin.write(_EOT + _EOT)  # the first ^D only pushes the unterminated line
        else:
            stdin.write(_EOT)

    def discard(self) -> None:
        """Undo what start() prepared for a process that never ran."""
        self._release()

    # --- output ------------------------------------------------------------------------

    def _deliver(self, stream: int, data: bytes) -> None:
        if self._sink_error:
            return
        step = self._read_chunk
        try:
            for offset in range(0, len(data), step):
                self._sink(stream, data[offset : offset + step])
        except Exception as exc:  # the agent's sink failing ends this task, not the loop
            log.exception("output sink of pid %s failed; killing the task", self.pid)
            self._sink_error = f"output sink failed: {exc!r}"
            self.cancel(State.FAILED, self._sink_error)

    def _stream_closed(self, stream: int, exc: Exception | None) -> None:
        if exc is not None and not (stream == common_pb2.PTY and is_eio(exc)):
            log.warning("output stream %s of pid %s broke: %r", stream, self.pid, exc)
        if stream == common_pb2.PTY and self._stdin is not None and not self._stdin.is_closing():
            self._stdin.abort()  # the terminal is gone; writes would now fail with EIO
        self._open_streams -= 1
        if self._open_streams == 0:
            self._output_done.set()

    # --- lifecycle ---------------------------------------------------------------------

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        self._exited.set()
        self._wake.set()

    async def _lifecycle(self) -> Outcome:
        try:
            await self._until_exit_or_stop()
            if self._stop is not None and not self._exited.is_set():
                await self._terminate()
            await self._kill_tree()
            notes = [await self._wait_gone(), await self._drain()]
            self._reap()
            return self._outcome([n for n in (*notes, self._reap_note) if n])
        except asyncio.CancelledError:
            self._kill_now()
            self._reap_now()
            raise
        finally:
            self._release()

    async def _until_exit_or_stop(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._wake.wait()
        except TimeoutError:
            # float() and round(): "5.0 s" for an int 5, "299.873 s" for a computed remainder.
            limit = round(float(self._timeout_s or 0), 3)
            self.cancel(State.TIMED_OUT, f"timed out after {limit} s")

    async def _terminate(self) -> None:
        """SIGTERM the group and give it the grace period to exit on its own."""
        leader = self._leader()
        if not self._contained:
            # Snapshot first: once the leader dies its children are reparented and the /proc
            # walk can no longer find them from it.
            self._known = await asyncio.to_thread(process_tree, leader, ())
        signal_group(leader, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._kill_grace_s):
                await self._exited.wait()

    async def _kill_tree(self) -> None:
        # A group the tree was born in holds all of it. Otherwise a stop walks /proc, and so
        # does the end of a PTY run (job-control shells put jobs in other process groups of
        # the session). A full scan costs ~20 us per process on the host, too much to pay
        # after every task, so other natural exits walk only if their process group still
        # has members; leftovers that changed process group (setsid, setpgid) stay out of
        # reach without a cgroup.
        leader = self._leader()
        if self._contained:
            pass
        elif self._stop is not None or self._launch.pty:
            self._killed = await asyncio.to_thread(stop_and_kill, leader, self._known)
        else:
            # With the leader reaped, killpg fails (ESRCH) exactly when nobody else is left
            # in its group; members left keep the group id taken, so it cannot be reused.
            self._reap()
            if signal_group(leader, signal.SIGKILL):
                self._killed = await asyncio.to_thread(stop_and_kill, leader, set())
        self._kill_now()

    def _leader(self) -> int:
        if self.pid is None:
            raise RuntimeError("no process was spawned")
        return self.pid

    def _kill_now(self) -> None:
        """SIGKILL everything we know of, without waiting (also the cancellation path)."""
        if self.pid is None:
            return
        if self._cgroup is not None:
            with contextlib.suppress(CortexError):
                self._cgroup.kill()
        if not self._reaped:  # the unreaped leader keeps its group id from being reused
            signal_group(self.pid, signal.SIGKILL)
        signal_each(self._killed | self._known, signal.SIGKILL)

    async def _wait_gone(self) -> str:
        deadline = self._loop.time() + _GONE_BOUND_S
        pause, next_kill = 0.001, self._loop.time() + 0.5
        while not self._gone():
            now = self._loop.time()
            if now >= deadline:
                return f"processes survived SIGKILL for {_GONE_BOUND_S:.0f} s: {self._survivors()}"
            if now >= next_kill:
                self._kill_now()
                next_kill = now + 0.5
            await asyncio.sleep(pause)  # no exit notification for a whole tree: poll, backing off
            pause = min(pause * 2, 0.05)
        return ""

    def _gone(self) -> bool:
        if not self._exited.is_set():
            return False
        if self._cgroup is not None and not self._cgroup.is_empty():
            return False
        return not any(is_alive(p) for p in self._killed | self._known)

    def _survivors(self) -> list[int]:
        alive = {pid for pid, start in self._killed | self._known if is_alive((pid, start))}
        if self._cgroup is not None:
            alive.update(self._cgroup.pids())
        if not self._exited.is_set() and self.pid is not None:
            alive.add(self.pid)
        return sorted(alive)

    async def _drain(self) -> str:
        try:
            async with asyncio.timeout(_DRAIN_BOUND_S):
                await self._output_done.wait()
        except TimeoutError:
            return "output cut: a process outside the task's tree still holds its output open"
        return ""

    def _reap(self) -> None:
        """Collect the leader's exit status (or a note saying why there is none)."""
        if self._reaped or self.pid is None or self._proc is None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Popen must not think the child still runs (its __del__ would warn and waitpid).
            self._reaped, self._proc.returncode = True, -1
            self._reap_note = "exit status lost: another waitpid() in the agent reaped it"
            return
        if not pid:
            self._reap_note = "the process did not exit"
            return
        self._returncode = os.waitstatus_to_exitcode(status)
        self._reaped, self._proc.returncode, self._reap_note = True, self._returncode, ""

    def _reap_now(self) -> None:
        """Reap right after SIGKILL, blocking up to 1 s: only for paths that cannot await."""
        if self._pidfd >= 0 and not self._reaped:
            select.select([self._pidfd], [], [], 1.0)
            self._reap()

    def _outcome(self, notes: list[str]) -> Outcome:
        code = self._returncode
        if self._sink_error:
            state, reason = State.FAILED, self._sink_error
        elif self._stop is not None:
            state, reason = self._stop
        elif code is None:
            state, reason = State.FAILED, ""  # the notes say why there is no exit status
        elif code == 0:
            state, reason = State.SUCCEEDED, ""
        elif code > 0:
            state, reason = State.FAILED, f"exit code {code}"
        else:
            state, reason = State.FAILED, f"killed by signal {-code}"
        return Outcome(state, code, "; ".join([r for r in (reason, *notes) if r]))

    def _release(self) -> None:
        """Free every resource of the run; safe to call more than once."""
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        for transport in [*self._readers, *([self._stdin] if self._stdin else [])]:
            transport.close()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        group, self._cgroup = self._cgroup, None
        if group is None:
            return
        try:
            group.remove()
        except CortexError as exc:
            log.warning("cgroup of pid %s left for kill_stale(): %s", self.pid, exc)


class _Reader(asyncio.Protocol):
    def __init__(self, run: ShellRun, stream: int) -> None:
        self._run = run
        self._stream = stream

    def data_received(self, data: bytes) -> None:
        self._run._deliver(self._stream, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._run._stream_closed(self._stream, exc)

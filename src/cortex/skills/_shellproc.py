"""Process-level helpers of the shell skill: turning a spec into a launch, explaining spawn
failures, and finding, signalling and killing a task's process tree through /proc.

Split from `shell.py` (which holds the run's lifecycle); nothing here keeps state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import signal
import struct
import termios
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from cortex._proto.cortex.v1 import common_pb2
from cortex.errors import CortexError, InvalidArgument, Unavailable
from cortex.skills.base import (
    TaskCgroup,
)

log = logging.getLogger("cortex.skills.shell")

_SHELL = "/bin/sh"
_DEFAULT_ROWS, _DEFAULT_COLS = 24, 80
_STOP_ROUNDS = 64

Pid = tuple[int, int]  # (pid, start time in clock ticks): immune to pid reuse


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    stdin: bytes
    interactive: bool
    pty: bool
    rows: int
    cols: int


def launch_of(shell: common_pb2.ShellSpec) -> Launch:
    """Validate a ShellSpec into what spawn needs; InvalidArgument names the bad field."""
    if bool(shell.argv) == bool(shell.command):
        raise InvalidArgument("a shell spec needs exactly one of argv (exec'd) or command (sh -c)")
    argv = list(shell.argv) if shell.argv else [_SHELL, "-c", shell.command]
    if any("\0" in arg for arg in argv) or "\0" in shell.cwd:
        raise InvalidArgument("shell argv, command and cwd must not contain NUL bytes")
    for key, value in shell.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(f"bad environment variable {key!r}: no '=' or NUL allowed")
    if shell.rows > 65535 or shell.cols > 65535:
        raise InvalidArgument(f"terminal size {shell.rows}x{shell.cols} is over 65535")
    env = {**os.environ, **shell.env}
    if shell.pty:
        env.setdefault("TERM", "xterm-256color")  # a daemon's env often has none; TUIs need one
    return Launch(
        argv=argv,
        env=env,
        cwd=shell.cwd or None,
        stdin=shell.stdin,
        interactive=shell.interactive,
        pty=shell.pty,
        rows=shell.rows or _DEFAULT_ROWS,
        cols=shell.cols or _DEFAULT_COLS,
    )


def spawn_failure(exc: OSError, launch: Launch) -> str:
    """The reason a spawn failed, naming the file at fault."""
    if launch.cwd is not None and exc.filename == launch.cwd:
        what = {
            errno.ENOENT: "working directory not found",
            errno.ENOTDIR: "working directory is not a directory",
            errno.EACCES: "permission denied on working directory",
        }.get(exc.errno or 0, f"cannot enter working directory ({exc.strerror})")
        return f"{what}: {launch.cwd}"
    exe = launch.argv[0]
    if exc.errno == errno.ENOENT:
        return f"executable not found: {exe}"
    if exc.errno == errno.EACCES:
        return f"permission denied: {exe}"
    return f"cannot execute {exe}: {exc.strerror or exc}"


def check_executable(launch: Launch) -> None:
    """Raise the OSError execvp would, for a spawn that goes through a wrapper."""
    exe = launch.argv[0]
    if launch.cwd is not None and not os.path.isdir(launch.cwd):
        return  # Popen's chdir reports this one, precisely
    if "/" not in exe:
        if shutil.which(exe, path=launch.env.get("PATH", os.defpath)) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)
        return
    path = os.path.join(launch.cwd or os.getcwd(), exe)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), exe)


def require_pidfd() -> None:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        raise Unavailable("the shell skill needs pidfd_open (Linux 5.3 or later)") from exc


# --- process tree -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Proc:
    pid: int
    ppid: int
    pgrp: int
    session: int
    start: int
    dead: bool  # zombie: exited, only its parent's waitpid is missing


def _read_stat(pid: int) -> _Proc | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)  # raw: half the cost of open()
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses; everything after the last ")" is plain.
    rest = data[data.rindex(b")") + 2 :].split()
    return _Proc(pid, int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]), rest[0] in b"ZX")


def _scan() -> dict[int, _Proc]:
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := _read_stat(int(name))) is not None:
            procs[proc.pid] = proc
    return procs


def process_tree(leader: int, extra: Iterable[Pid]) -> set[Pid]:
    """Live processes of a task: its process group and session, the leader's descendants,
    `extra` ones still alive, and the descendants of all of those."""
    procs = _scan()
    children: defaultdict[int, list[int]] = defaultdict(list)
    for proc in procs.values():
        children[proc.ppid].append(proc.pid)
    stack = [leader]
    stack += [p.pid for p in procs.values() if leader in (p.pgrp, p.session)]
    stack += [pid for pid, start in extra if pid in procs and procs[pid].start == start]
    found: set[int] = set()
    never = {1, os.getpid()}
    while stack:
        pid = stack.pop()
        if pid in found or pid in never or pid not in procs:
            continue
        found.add(pid)
        stack.extend(children[pid])
    return {(pid, procs[pid].start) for pid in found if not procs[pid].dead}


def stop_and_kill(leader: int, known: set[Pid]) -> set[Pid]:
    """SIGSTOP the tree until no new member appears, then SIGKILL it; the killed set.

    Stopped processes cannot fork, and a stopped parent keeps its children findable by
    ppid, so the walk converges on the whole tree before anything dies and orphans.
    """
    stopped: set[Pid] = set()
    for _ in range(_STOP_ROUNDS):
        fresh = process_tree(leader, known | stopped) - stopped
        if not fresh:
            break
        signal_each(fresh, signal.SIGSTOP)
        stopped |= fresh
    signal_each(stopped, signal.SIGKILL)
    return stopped


def is_alive(entry: Pid) -> bool:
    proc = _read_stat(entry[0])
    return proc is not None and proc.start == entry[1] and not proc.dead


def signal_each(entries: Iterable[Pid], sig: signal.Signals) -> None:
    for entry in entries:
        if is_alive(entry):  # same start time: not a new process that got a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(entry[0], sig)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; whether it had any member (zombies count)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # members exist, none of them ours to signal
    return True


def leave_cgroup(group: TaskCgroup) -> None:
    try:
        group.end_spawn()
    except CortexError:
        # The child is spawned and must be tracked, so do not raise; Cgroup.kill refuses to
        # kill a group the agent is still in.
        log.exception("the agent could not leave %s", group)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def is_eio(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EIO


def with_rlimits(launch: Launch, prlimit: str | None, *, memory_bytes: int) -> Launch:
    """The launch run under `prlimit --as` (address space: the fallback when no cgroup can
    limit memory; it counts virtual memory, so it is stricter than a cgroup's RSS limit).
    Without prlimit(1) the task runs unlimited and the node says so when it connects."""
    if prlimit is None:
        return launch
    return dataclasses.replace(launch, argv=[prlimit, f"--as={memory_bytes}", "--",
                                             *launch.argv])

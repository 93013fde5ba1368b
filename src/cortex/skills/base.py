"""The one interface every skill implements, and the small values it passes around.

A `Skill` starts a `TaskRun`; the run streams output to an `OutputSink` while it lives and
ends with one `Outcome`. The node agent only ever talks to these names, so adding a skill
never touches the agent.

Skills must not import `cortex.node` (the node imports skills), so the cgroup backend the
shell skill uses is described here as a Protocol that `cortex.node.cgroups` satisfies.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.errors import Conflict, InvalidArgument

__all__ = [
    "FINAL_STATES",
    "MAX_PENDING_STDIN",
    "CgroupFactory",
    "FinishedRun",
    "Outcome",
    "OutputSink",
    "Skill",
    "TaskCgroup",
    "TaskRun",
    "task_group_name",
]

# (common_pb2.OutputStream value, data); called in order, on the event loop thread.
OutputSink = Callable[[int, bytes], None]

# Bound on stdin bytes accepted by write_stdin() but not yet taken by the process.
MAX_PENDING_STDIN = 1 << 20

# The states a run can end in; LOST is the hub's verdict, never a node's.
FINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.TIMED_OUT})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended. `exit_code` is None when no process ran (or its status was lost)."""

    state: State
    exit_code: int | None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.state not in FINAL_STATES:
            raise InvalidArgument(f"a run cannot end in state {self.state.label!r}")


class TaskRun(Protocol):
    """One running task. All methods are called on the event loop thread.

    The sink is called synchronously from the loop between start() and the moment wait()
    resolves, never after; so once wait() returns, every byte of output has been handed over.
    """

    pid: int | None

    def write_stdin(self, data: bytes) -> None:
        """Queue `data` for the process; InvalidArgument past MAX_PENDING_STDIN pending."""

    def close_stdin(self) -> None: ...

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size (PTY runs); a no-op otherwise."""

    def cancel(self, state: State = State.CANCELLED, reason: str = "") -> None:
        """Idempotent; starts killing the whole process tree and returns at once."""

    async def wait(self) -> Outcome:
        """The outcome, once the whole tree is gone and all output went to the sink."""
        ...


class Skill(Protocol):
    name: str

    async def start(
        self,
        *,
        task_id: str,
        attempt: int,
        spec: common_pb2.TaskSpec,
        timeout_s: float | None,
        sink: OutputSink,
    ) -> TaskRun: ...


class TaskCgroup(Protocol):
    """One task's control group (see cortex.node.cgroups.Cgroup)."""

    @property
    def kind(self) -> str: ...

    def add(self, pid: int) -> None: ...

    def begin_spawn(self) -> None:
        """Until end_spawn(), processes the calling thread forks start inside the group."""

    def end_spawn(self) -> None: ...

    def pids(self) -> list[int]: ...

    def kill(self) -> None: ...

    def is_empty(self) -> bool: ...

    def remove(self) -> None: ...


class CgroupFactory(Protocol):
    """Creates task cgroups (see cortex.node.cgroups.CgroupManager)."""

    def create_for_task(self, name: str, *, memory_bytes: int | None = None,
                        cpus: float | None = None) -> TaskCgroup:
        """A task's group, limited where this host's controllers allow (see `enforces`)."""

    @property
    def enforces(self) -> frozenset[str]:
        """Which of "memory" and "cpu" `create_for_task` limits."""


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def task_group_name(task_id: str, attempt: int) -> str:
    """The cgroup name of one attempt; the agent passes these to `kill_stale(keep=...)`."""
    safe = _UNSAFE.sub("_", task_id)[:80]
    if safe != task_id:
        # Replaced characters could make two ids collide; the digest keeps them apart.
        safe += "-" + hashlib.sha256(task_id.encode()).hexdigest()[:8]
    return f"{safe}.{attempt}"


class FinishedRun:
    """A run that was over before it started: a no-op task or a process that failed to spawn."""

    def __init__(self, outcome: Outcome) -> None:
        self.pid: int | None = None
        self._outcome = outcome

    def write_stdin(self, data: bytes) -> None:
        raise Conflict("the task has finished; its stdin is closed")

    def close_stdin(self) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass

    def cancel(self, state: State = State.CANCELLED, reason: str = "") -> None:
        pass

    async def wait(self) -> Outcome:
        return self._outcome

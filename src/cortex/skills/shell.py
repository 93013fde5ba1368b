"""The shell skill: runs `ShellSpec` tasks as process trees, each in its own session, process
group and (when the node has them) cgroup, with memory/CPU limits by cgroup or rlimit.

How one run goes from spawn to the end of its whole tree: `cortex.skills._shellrun`.
"""

from __future__ import annotations

import logging
import math
import shutil

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.errors import CortexError, InvalidArgument
from cortex.skills._shellproc import (
    launch_of,
    require_pidfd,
    spawn_failure,
    with_rlimits,
)
from cortex.skills._shellrun import ShellRun
from cortex.skills.base import (
    CgroupFactory,
    FinishedRun,
    Outcome,
    OutputSink,
    TaskCgroup,
    TaskRun,
    task_group_name,
)

__all__ = ["ShellSkill"]

log = logging.getLogger(__name__)


class ShellSkill:
    """Runs ShellSpec tasks as process trees, each in its own session (and cgroup if given)."""

    name = "shell"

    def __init__(
        self,
        *,
        cgroups: CgroupFactory | None,
        kill_grace_s: float = 2.0,
        read_chunk: int = 65536,
    ) -> None:
        if not (math.isfinite(kill_grace_s) and kill_grace_s >= 0):
            raise InvalidArgument(f"kill_grace_s must be >= 0 seconds, got {kill_grace_s}")
        if read_chunk < 1:
            raise InvalidArgument(f"read_chunk must be >= 1 byte, got {read_chunk}")
        require_pidfd()
        self._cgroups = cgroups
        self._kill_grace_s = kill_grace_s
        self._read_chunk = read_chunk
        self._setsid = shutil.which("setsid")
        self._prlimit = shutil.which("prlimit")
        if self._setsid is None:
            log.warning(
                "no setsid(1) on PATH: PTY tasks get no controlling terminal, so ^C, job "
                "control and SIGWINCH will not reach them (install util-linux)"
            )

    async def start(
        self,
        *,
        task_id: str,
        attempt: int,
        spec: common_pb2.TaskSpec,
        timeout_s: float | None,
        sink: OutputSink,
    ) -> TaskRun:
        """Spawn the task; InvalidArgument for a malformed spec, a FAILED run if it cannot exec."""
        launch = launch_of(spec.shell)
        if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
            raise InvalidArgument(f"timeout_s must be > 0 seconds or None, got {timeout_s}")
        memory = spec.resources.memory_mib * 1024 * 1024 or None
        cpus = spec.resources.cpus or None
        cgroup = self._cgroup(task_id, attempt, memory, cpus)
        if memory and (cgroup is None or "memory" not in self.enforces):
            launch = with_rlimits(launch, self._prlimit, memory_bytes=memory)
        run = ShellRun(
            launch=launch,
            sink=sink,
            cgroup=cgroup,
            kill_grace_s=self._kill_grace_s,
            read_chunk=self._read_chunk,
            timeout_s=timeout_s,
            setsid=self._setsid,
        )
        try:
            run.spawn()
        except OSError as exc:
            run.discard()
            return FinishedRun(Outcome(State.FAILED, None, spawn_failure(exc, launch)))
        await run.connect()
        return run

    @property
    def enforces(self) -> frozenset[str]:
        """Which limits a task's cgroup enforces ("memory", "cpu")."""
        return self._cgroups.enforces if self._cgroups is not None else frozenset()

    @property
    def limit_enforcement(self) -> str:
        """How this node enforces task limits, as nodes report it to the hub."""
        if self._cgroups is not None and self.enforces:
            return "cgroup1" + ("" if self.enforces == {"memory", "cpu"} else "-partial")
        return "rlimit" if self._prlimit else "none"

    def _cgroup(self, task_id: str, attempt: int, memory: int | None, cpus: float | None
                ) -> TaskCgroup | None:
        if self._cgroups is None:
            return None
        try:
            return self._cgroups.create_for_task(task_group_name(task_id, attempt),
                                                 memory_bytes=memory, cpus=cpus)
        except CortexError as exc:
            # Failing the task would be worse: without a group the /proc walk still reaches
            # everything but a double-forked daemon.
            log.warning("task %s.%s runs without a cgroup: %s", task_id, attempt, exc)
            return None

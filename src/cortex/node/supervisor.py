"""The supervisor: which task attempts run on this node, through which skill.

It owns one watcher task per run (awaiting `run.wait()`), so every run is awaited even if its
starter forgets, and `running()` drops a run the moment its process tree is gone. Shutdown
is two-phase: `cancel_all()`, then `await wait_all()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.errors import Conflict, InvalidArgument
from cortex.skills.base import OutputSink, Skill, TaskRun

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

_DEFAULT_SKILL = "shell"  # TaskSpec.skill "" means shell (common.proto)

Key = tuple[str, int]


class Supervisor:
    def __init__(self, skills: Mapping[str, Skill]) -> None:
        self._skills = dict(skills)
        self._runs: dict[Key, TaskRun] = {}
        self._watchers: dict[Key, asyncio.Task[None]] = {}
        self._starting: set[Key] = set()

    async def start(
        self,
        task_id: str,
        attempt: int,
        spec: common_pb2.TaskSpec,
        timeout_s: float | None,
        sink: OutputSink,
    ) -> TaskRun:
        """Start one attempt; InvalidArgument for an unknown skill, Conflict if it already runs."""
        key = (task_id, attempt)
        name = spec.skill or _DEFAULT_SKILL
        skill = self._skills.get(name)
        if skill is None:
            raise InvalidArgument(
                f"unknown skill {name!r}; this node runs: {', '.join(sorted(self._skills))}"
            )
        if key in self._runs or key in self._starting:
            raise Conflict(f"task {task_id} attempt {attempt} is already running on this node")
        # Reserved across the await, so a concurrent start of the same attempt sees it.
        self._starting.add(key)
        try:
            run = await skill.start(
                task_id=task_id, attempt=attempt, spec=spec, timeout_s=timeout_s, sink=sink
            )
        finally:
            self._starting.discard(key)
        self._runs[key] = run
        self._watchers[key] = asyncio.create_task(self._watch(key, run), name=f"watch {key}")
        return run

    def get(self, task_id: str, attempt: int) -> TaskRun | None:
        return self._runs.get((task_id, attempt))

    def running(self) -> list[Key]:
        return list(self._runs)

    def cancel_all(self, reason: str = "node shutting down") -> None:
        """Start killing every run; `wait_all()` returns once they are gone."""
        for run in list(self._runs.values()):
            run.cancel(State.CANCELLED, reason)

    async def wait_all(self) -> None:
        """Return once every run started so far has ended (and its watcher with it)."""
        while self._watchers:
            await asyncio.wait(list(self._watchers.values()))

    def capacity(self) -> dict[str, int]:
        """Resources skills advertise (the browser skill: ``browser_sessions``)."""
        merged: dict[str, int] = {}
        for skill in self._skills.values():
            merged.update(getattr(skill, "capacity", {}))
        return merged

    def in_use(self) -> dict[str, int]:
        """What skills hold now beyond their runs (the browser skill: open
        ``browser_sessions``), reported in heartbeats against `capacity()`."""
        merged: dict[str, int] = {}
        for skill in self._skills.values():
            in_use = getattr(skill, "in_use", None)
            if in_use is not None:
                merged.update(in_use())
        return merged

    async def aclose_skills(self) -> None:
        """Let skills holding resources beyond their runs (browsers) release them."""
        for skill in self._skills.values():
            close = getattr(skill, "aclose", None)
            if close is not None:
                await close()

    async def _watch(self, key: Key, run: TaskRun) -> None:
        try:
            await run.wait()
        except asyncio.CancelledError:
            raise
        except Exception:  # the starter gets the same error from run.wait(); log it once here
            log.exception("run %s ended with an error", key)
        finally:
            self._runs.pop(key, None)
            self._watchers.pop(key, None)

"""A skill that does nothing and succeeds: measures dispatch without any process cost."""

from __future__ import annotations

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.skills.base import FinishedRun, Outcome, OutputSink, TaskRun

__all__ = ["NoopSkill"]

_DONE = Outcome(State.SUCCEEDED, None)


class NoopSkill:
    name = "noop"

    async def start(
        self,
        *,
        task_id: str,
        attempt: int,
        spec: common_pb2.TaskSpec,
        timeout_s: float | None,
        sink: OutputSink,
    ) -> TaskRun:
        return FinishedRun(_DONE)

"""What the tools return: small models (their JSON Schema is each tool's output schema)
and the conversions from protocol messages. Unset fields are left out of the result."""

from __future__ import annotations

import datetime as dt
import json
import shlex

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from cortex.sdk import TERMINAL_STATES, Node, NodeState, Task, TaskState

__all__ = [
    "Cancelled",
    "NodeList",
    "NodeRow",
    "StdinWritten",
    "TaskList",
    "TaskOutput",
    "TaskRow",
    "TaskRun",
    "TaskStatus",
    "exit_code",
    "finished",
    "node_row",
    "result",
    "state_name",
    "task_row",
    "task_status",
]


class NodeLoad(BaseModel):
    load1: float
    cpu_percent: float
    memory_used_mib: int


class NodeRow(BaseModel):
    id: str
    name: str
    state: str
    labels: dict[str, str]
    skills: list[str]
    running: int
    slots: int | None = None
    load: NodeLoad | None = None


class NodeList(BaseModel):
    nodes: list[NodeRow]
    hint: str | None = None


class TaskRun(BaseModel):
    """run_command / start_task: the task, and its result or what to call next."""

    task_id: str
    state: str
    exit_code: int | None = None
    reason: str | None = None
    node_id: str | None = None
    duration_s: float | None = None
    hint: str | None = None
    next_seq: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class AttemptRow(BaseModel):
    attempt: int
    state: str
    node_id: str | None = None
    exit_code: int | None = None
    reason: str | None = None


class TaskStatus(BaseModel):
    task_id: str
    state: str
    finished: bool
    exit_code: int | None = None
    reason: str | None = None
    command: str
    node_id: str | None = None
    attempt: int
    max_attempts: int
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    queued_s: float | None = None
    run_s: float | None = None
    cancel_requested: bool | None = None
    output_bytes: int
    output_truncated: bool | None = None
    last_seq: int
    attempts: list[AttemptRow] | None = None


class TaskOutput(BaseModel):
    task_id: str
    state: str
    finished: bool
    more: bool
    next_seq: int
    next_skip_bytes: int
    exit_code: int | None = None
    hint: str | None = None
    stdout: str
    stderr: str


class Cancelled(BaseModel):
    task_id: str
    state: str
    finished: bool
    exit_code: int | None = None
    reason: str | None = None
    hint: str | None = None


class StdinWritten(BaseModel):
    task_id: str
    bytes_written: int
    eof: bool
    state: str


class TaskRow(BaseModel):
    task_id: str
    state: str
    command: str
    node_id: str | None = None
    exit_code: int | None = None
    created_at: str
    reason: str | None = None


class TaskList(BaseModel):
    tasks: list[TaskRow]
    more: bool
    hint: str | None = None


def result(model: BaseModel) -> CallToolResult:
    """The model as structured content, and the same JSON as text for older clients."""
    data = model.model_dump(mode="json", exclude_none=True)
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def state_name(state: int) -> str:
    return TaskState.Name(TaskState.ValueType(state)).lower() if state else "unknown"


def finished(task: Task) -> bool:
    return task.state in TERMINAL_STATES


def exit_code(task: Task) -> int | None:
    return task.exit_code if task.has_exit_code else None


def iso(timestamp: float) -> str | None:
    """A protocol time (seconds since the epoch; 0 = unset) as ISO 8601 UTC, to the second."""
    if not timestamp:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def command_summary(task: Task, *, width: int = 100) -> str:
    spec = task.spec
    if spec.skill not in ("", "shell"):
        text = spec.skill
    else:
        text = spec.shell.command or shlex.join(spec.shell.argv)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def node_row(node: Node) -> NodeRow:
    online = node.state in (NodeState.ONLINE, NodeState.DRAINING)
    return NodeRow(
        id=node.id,
        name=node.name,
        state=NodeState.Name(node.state).lower() if node.state else "unknown",
        labels=dict(sorted(node.labels.items())),
        skills=sorted(node.skills),
        running=node.running_tasks,
        slots=node.capacity.slots or None,
        load=NodeLoad(
            load1=round(node.load.load1, 2),
            cpu_percent=round(node.load.cpu_percent, 1),
            memory_used_mib=node.load.memory_used_mib,
        ) if online and node.HasField("load") else None,
    )


def task_row(task: Task) -> TaskRow:
    return TaskRow(
        task_id=task.id,
        state=state_name(task.state),
        command=command_summary(task, width=80),
        node_id=task.node_id or None,
        exit_code=exit_code(task),
        created_at=iso(task.created_at) or "",
        reason=task.reason or None,
    )


def task_status(task: Task, *, now: float) -> TaskStatus:
    begun = task.started_at or task.assigned_at
    end = task.finished_at or now
    attempts = [
        AttemptRow(
            attempt=a.attempt,
            state=state_name(a.state),
            node_id=a.node_id or None,
            exit_code=a.exit_code if a.has_exit_code else None,
            reason=a.reason or None,
        )
        for a in task.attempts
    ]
    return TaskStatus(
        task_id=task.id,
        state=state_name(task.state),
        finished=finished(task),
        exit_code=exit_code(task),
        reason=task.reason or None,
        command=command_summary(task),
        node_id=task.node_id or None,
        attempt=task.attempt,
        max_attempts=max(task.spec.retry.max_attempts, 1),
        created_at=iso(task.created_at) or "",
        started_at=iso(task.started_at),
        finished_at=iso(task.finished_at),
        queued_s=_seconds((begun or end) - task.created_at) if task.created_at else None,
        run_s=_seconds(end - task.started_at) if task.started_at else None,
        cancel_requested=task.cancel_requested or None,
        output_bytes=task.output_bytes,
        output_truncated=task.output_truncated or None,
        last_seq=task.last_seq,
        attempts=attempts if len(attempts) > 1 else None,
    )


def _seconds(value: float) -> float:
    return round(max(0.0, value), 2)

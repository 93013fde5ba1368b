"""What the task manager keeps per task, its counters, and small helpers on task values.

Split from `tasks.py` so that module holds only the moves; nothing here does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.artifacts import check_artifact_globs, check_inputs
from cortex.core.states import State
from cortex.core.validation import check_resources, check_shell, check_task
from cortex.errors import InvalidArgument

__all__ = [
    "LATENCY_BUCKETS_S",
    "Entry",
    "TaskStats",
    "attempt_row",
    "copy_task",
    "first_of",
    "normalise",
    "stale_reason",
    "validate",
]

_TAIL_BYTES = 1024 * 1024


LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0)


@dataclass
class TaskStats:
    """Counters since the hub started, for /metrics (values only; no I/O)."""

    finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, state)
    # Dispatch latency: queued -> assigned, per assignment (retries included).
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    latency_sum_s: float = 0.0
    latency_count: int = 0

    def on_finish(self, tenant: str, state: str) -> None:
        self.finished[(tenant, state)] = self.finished.get((tenant, state), 0) + 1

    def on_assign(self, queued_s: float) -> None:
        queued_s = max(0.0, queued_s)
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if queued_s <= bound:
                self.latency_buckets[i] += 1
        self.latency_sum_s += queued_s
        self.latency_count += 1


@dataclass(eq=False)
class Entry:
    tenant: str
    task: pb.Task
    acked_seq: int = 0                  # newest node event seq stored for the current attempt
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Replaced (and the old one set) on every change, so a waiter can never miss one.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    kill_deadline: float = 0.0          # deadline + grace, once the node was told to stop
    queued_at: float = 0.0              # when it (re)entered the queue, for dispatch latency
    stdin_sent: int = 0                 # stdin bytes forwarded to the node (this attempt)
    stdin_acked: int = 0                # of which the node handed the process this many
    stdin_room: asyncio.Event = field(default_factory=asyncio.Event)
    # The newest committed events, so live watchers need no store read. Bounded by bytes.
    tail: list[pb.TaskEvent] = field(default_factory=list)
    tail_bytes: int = 0
    followers: int = 0                  # open Watch/Attach streams following it live
    why: str = ""                       # why it waits (kept here, not stored, by a hub
                                        # sharing its store: each sees only its nodes)
    sent_attempt: int = 0               # the attempt whose Assign this hub sent its node

    def remember(self, events: list[pb.TaskEvent]) -> None:
        self.tail.extend(events)
        self.tail_bytes += sum(e.ByteSize() for e in events)
        while self.tail_bytes > _TAIL_BYTES and len(self.tail) > 1:
            self.tail_bytes -= self.tail.pop(0).ByteSize()

    def events_after(self, seq: int) -> list[pb.TaskEvent] | None:
        """Events after `seq` from memory, or None if the tail no longer reaches back."""
        if not self.tail or self.tail[0].seq > seq + 1:
            return None if self.task.last_seq > seq else []
        start = seq + 1 - self.tail[0].seq
        return self.tail[max(0, start):]


async def first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Return when the first of `waits` completes; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def copy_task(task: pb.Task) -> pb.Task:
    new = pb.Task()
    new.CopyFrom(task)
    return new


def attempt_row(src: pb.Task, acked: int) -> pb.Attempt:
    """The stored row of `src`'s current attempt."""
    row = pb.Attempt(attempt=src.attempt, node_id=src.node_id, state=src.state,
                     reason=src.reason, started_at=src.started_at,
                     finished_at=src.finished_at, acked_seq=acked)
    if src.has_exit_code:
        row.exit_code = src.exit_code
        row.has_exit_code = True
    return row


def stale_reason(entry: Entry | None, attempt: int) -> str:
    if entry is None:
        return "the task is finished or unknown to the hub"
    if entry.task.attempt != attempt:
        return f"attempt {attempt} is stale; the task is on attempt {entry.task.attempt}"
    return f"the task is {State(entry.task.state).label} and not assigned to this node"


def normalise(spec: pb.TaskSpec) -> pb.TaskSpec:
    spec = copy_spec(spec)
    if not spec.skill:
        spec.skill = "shell"
    if spec.retry.max_attempts == 0:
        spec.retry.max_attempts = 1
    return spec


def copy_spec(spec: pb.TaskSpec) -> pb.TaskSpec:
    new = pb.TaskSpec()
    new.CopyFrom(spec)
    return new


def validate(spec: pb.TaskSpec) -> None:
    problems = check_task(
        skill=spec.skill, labels=spec.labels, timeout_s=spec.timeout_s,
        max_output_bytes=spec.max_output_bytes, priority=spec.priority,
        idempotency_key=spec.idempotency_key, session_id=spec.session_id,
        node_id=spec.node_id, max_attempts=spec.retry.max_attempts,
    )
    if spec.skill == "shell":
        sh = spec.shell
        problems += check_shell(sh.argv, sh.command, sh.env, sh.stdin)
    r = spec.resources
    problems += check_resources(cpus=r.cpus, memory_mib=r.memory_mib, gpus=r.gpus,
                                browser_sessions=r.browser_sessions)
    if len(spec.pool) > 63:
        problems.append("pool: at most 63 characters")
    problems += check_artifact_globs(list(spec.artifacts))
    problems += check_inputs([(i.artifact_id, i.path) for i in spec.inputs])
    if problems:
        raise InvalidArgument("; ".join(problems))

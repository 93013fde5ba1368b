"""What the dashboard shows, read through the task manager, registry and store, always
for one tenant; plus the small formatting helpers its templates use."""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections import Counter
from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.states import State
from cortex.errors import InvalidArgument
from cortex.hub.registry import Registry
from cortex.hub.tasks import TaskManager
from cortex.store.base import Store, TaskQuery

__all__ = [
    "PAGE",
    "STATE_NAMES",
    "TaskFilter",
    "age",
    "command_of",
    "duration",
    "list_nodes",
    "node_state",
    "search_tasks",
    "spec_json",
    "state_label",
    "tenant_counts",
    "when",
]

PAGE = 50            # tasks per page
_BATCH = 200         # tasks read from the store at a time while filtering
_SCAN = 2000         # tasks read per page at most; past it the page ends with "more"
_STATES = {s.label: s for s in State}
STATE_NAMES = tuple(_STATES)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """The task list's filters, from the query string; empty means "any"."""

    state: str = ""
    node: str = ""
    skill: str = ""
    text: str = ""
    after: str = ""     # page token: the id of the last task of the previous page

    @classmethod
    def parse(cls, params: dict[str, str]) -> TaskFilter:
        state = params.get("state", "").strip().lower()
        if state and state not in _STATES:
            raise InvalidArgument(
                f"state {state!r} is not a task state: pick one of {', '.join(_STATES)}")
        values = {k: params.get(k, "").strip() for k in ("node", "skill", "text", "after")}
        for key, value in values.items():
            if len(value) > 256:
                raise InvalidArgument(f"{key}: at most 256 characters")
        return cls(state=state, **values)

    def matches(self, task: pb.Task) -> bool:
        """The filters the store does not apply (skill, text)."""
        if self.skill and (task.spec.skill or "shell") != self.skill:
            return False
        if not self.text:
            return True
        needle = self.text.lower()
        hay = " ".join((task.id, task.node_id, task.reason, command_of(task)))
        return needle in hay.lower()


async def search_tasks(tasks: TaskManager, tenant: str, flt: TaskFilter
                       ) -> tuple[list[pb.Task], str]:
    """One page of the tenant's tasks matching `flt`, newest first, and the next page's
    token ("" when this is the last page)."""
    states = [int(_STATES[flt.state])] if flt.state else []
    found: list[pb.Task] = []
    after, scanned = flt.after, 0
    while True:
        batch = await tasks.list_tasks(tenant, TaskQuery(
            states=states, node_id=flt.node, limit=_BATCH, after_id=after))
        for task in batch:
            after, scanned = task.id, scanned + 1
            if flt.matches(task):
                found.append(task)
                if len(found) == PAGE:
                    return found, task.id
        if len(batch) < _BATCH:
            return found, ""
        if scanned >= _SCAN:
            return found, after


async def list_nodes(store: Store, registry: Registry, tenant: str) -> list[pb.Node]:
    """The tenant's nodes, the connected ones with their live view (as ListNodes does)."""
    out = []
    for node in await store.list_nodes(tenant):
        conn = registry.get(node.id)
        if conn is not None and conn.tenant == tenant:
            node.CopyFrom(conn.node)
            node.running_tasks = len(conn.running)
        elif node.state in (pb.ONLINE, pb.DRAINING):
            node.state = pb.OFFLINE
        out.append(node)
    return sorted(out, key=lambda n: (n.name, n.id))


async def tenant_counts(tasks: TaskManager, store: Store, registry: Registry, tenant: str
                        ) -> dict[str, object]:
    """What the tenant page shows: nodes by state, unfinished tasks by state, and tasks
    finished since the hub started by state."""
    nodes = Counter(node_state(n) for n in await list_nodes(store, registry, tenant))
    active = Counter(State(t.state).label for t in tasks.active_tasks() if t.tenant == tenant)
    finished = {state: n for (who, state), n in tasks.stats.finished.items() if who == tenant}
    return {"nodes": dict(sorted(nodes.items())), "active": dict(sorted(active.items())),
            "finished": dict(sorted(finished.items()))}


def state_label(state: int) -> str:
    try:
        return State(state).label
    except ValueError:
        return "unknown"


def node_state(node: pb.Node) -> str:
    return pb.NodeState.Name(node.state).lower() if node.state else "unknown"


def command_of(task: pb.Task) -> str:
    """A one-line summary of what the task runs."""
    spec = task.spec
    if (spec.skill or "shell") != "shell":
        args = json.dumps(MessageToDict(spec.args), sort_keys=True) if spec.HasField("args") \
            else ""
        return f"{spec.skill} {args}".strip()
    if spec.shell.command:
        return spec.shell.command
    return shlex.join(spec.shell.argv)


def spec_json(task: pb.Task) -> str:
    return json.dumps(MessageToDict(task.spec, preserving_proto_field_name=True), indent=2,
                      sort_keys=True)


def when(ts: float) -> str:
    """A Unix time as UTC text, or "" when unset."""
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(start: float, end: float) -> str:
    """`end - start` as short text ("1.2 s", "3 m 4 s"), or "" when either is unset."""
    if not start or not end:
        return ""
    return age(end - start)


def age(seconds: float) -> str:
    if seconds < 0:
        return f"-{age(-seconds)}"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} m {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} m"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"

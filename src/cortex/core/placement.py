"""Task placement: which connected node should run a task. Pure: values in, a decision out.

Hard constraints filter (pinned node, sticky session, pool, skill, labels, draining,
free CPU/memory/GPUs, room for a new browser session, free slots); among the feasible
nodes the least loaded wins, ties broken by id so the result is deterministic. When
nothing fits, the decision carries a reason a person or an agent can act on ("no node
has label os=mac").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["NodeView", "Placement", "TaskRequirements", "place"]


@dataclass(frozen=True, slots=True)
class NodeView:
    id: str
    labels: Mapping[str, str]
    skills: frozenset[str]
    slots: int                  # how many tasks it runs at once
    running: int                # tasks assigned or running there now
    draining: bool = False
    pool: str = "default"
    # The node's reported capacity, and what is left of it after the tasks it holds now.
    cpus: float = 0.0
    memory_mib: int = 0
    gpus: int = 0
    cpus_free: float = 0.0
    memory_free_mib: int = 0
    gpus_free: int = 0
    session_limit: int = 0      # browser sessions it holds at most (0 = no browser skill)
    sessions: int = 0           # browser sessions open there now


@dataclass(frozen=True, slots=True)
class TaskRequirements:
    skill: str
    labels: Mapping[str, str] = field(default_factory=dict)
    node_id: str = ""           # pinned by the caller
    session_node: str = ""      # the node holding the task's session, if any
    pool: str = ""              # "" = any pool of the tenant
    cpus: float = 0.0
    memory_mib: int = 0
    gpus: int = 0
    new_session: bool = False   # opens a browser session (it counts against session_limit)


@dataclass(frozen=True, slots=True)
class Placement:
    node_id: str | None
    reason: str = ""            # why nothing fits; empty when node_id is set


_RESOURCES = (("CPU cores", "cpus", "cpus_free"), ("MiB of memory", "memory_mib",
               "memory_free_mib"), ("GPUs", "gpus", "gpus_free"))


def place(req: TaskRequirements, nodes: Iterable[NodeView]) -> Placement:
    """The node that should run a task with `req`, or why none can right now."""
    candidates = list(nodes)
    if req.session_node and req.node_id and req.session_node != req.node_id:
        return Placement(None, f"the task is pinned to node {req.node_id} but its session "
                               f"lives on node {req.session_node}")
    wanted = req.session_node or req.node_id
    if wanted:
        candidates = [n for n in candidates if n.id == wanted]
        if not candidates:
            what = "session's node" if req.session_node else "pinned node"
            return Placement(None, f"the {what} {wanted} is not connected")
    if not candidates:
        return Placement(None, "no node is connected")
    if req.pool:
        candidates = [n for n in candidates if n.pool == req.pool]
        if not candidates:
            return Placement(None, f"no node of pool {req.pool!r} is connected")
    with_skill = [n for n in candidates if req.skill in n.skills]
    if not with_skill:
        return Placement(None, f"no connected node offers skill {req.skill!r}")
    matching = with_skill
    for key, value in sorted(req.labels.items()):
        narrowed = [n for n in matching if n.labels.get(key) == value]
        if not narrowed:
            return Placement(None, f"no connected node has label {key}={value}")
        matching = narrowed
    ready = [n for n in matching if not n.draining]
    if not ready:
        return Placement(None, "every matching node is draining")
    for what, need, have in _RESOURCES:
        amount = getattr(req, need)
        if not amount:
            continue
        big = [n for n in ready if getattr(n, need) + 1e-9 >= amount]
        if not big:
            most = max(getattr(n, need) for n in ready)
            return Placement(None, f"no matching node has {amount:g} {what} "
                                   f"(the most any has is {most:g})")
        fits = [n for n in big if getattr(n, have) + 1e-9 >= amount]
        if not fits:
            return Placement(None, f"busy: no matching node has {amount:g} {what} free now")
        ready = fits
    if req.new_session:
        roomy = [n for n in ready if not n.session_limit or n.sessions < n.session_limit]
        if not roomy:
            return Placement(None, "busy: every matching node is at its browser session "
                                   "limit; waiting for a session to close (cortex browser "
                                   "close NAME, or the idle timeout)")
        ready = roomy
    free = [n for n in ready if n.running < n.slots]
    if not free:
        return Placement(None, "every matching node is busy (all slots in use)")
    best = min(free, key=lambda n: (n.running / max(1, n.slots), n.id))
    return Placement(best.id)

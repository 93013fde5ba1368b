"""Placement: hard constraints always hold, the least loaded node wins, and refusals say why."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.core.placement import NodeView, Placement, TaskRequirements, place

SETTINGS = settings(max_examples=200, deadline=None)

# Small alphabets so random nodes and requirements often (but not always) match.
SKILLS = ("shell", "noop", "browser")
LABEL_KEYS = ("os", "arch", "zone")
LABEL_VALUES = ("a", "b")
NODE_IDS = tuple(f"n-{i}" for i in range(6))


def node(node_id: str, *, skills: tuple[str, ...] = ("shell",), slots: int = 2,
         running: int = 0, draining: bool = False, **labels: str) -> NodeView:
    return NodeView(id=node_id, labels=labels, skills=frozenset(skills), slots=slots,
                    running=running, draining=draining)


# Flat tuples of choices keep generation cheap (dictionaries and sets cost far more). The
# weights make several feasible nodes common, so ties and load comparisons get exercised.
def _labels(choices: tuple[str | None, ...]) -> st.SearchStrategy[dict[str, str]]:
    return st.tuples(*[st.sampled_from(choices)] * len(LABEL_KEYS)).map(
        lambda values: {k: v for k, v in zip(LABEL_KEYS, values, strict=True) if v is not None}
    )


_node_labels = _labels(("a", "a", "b", None))
_wanted_labels = _labels((None, None, None, "a", "b"))
_skill_sets = st.tuples(*[st.sampled_from((True, True, False))] * len(SKILLS)).map(
    lambda has: frozenset(s for s, yes in zip(SKILLS, has, strict=True) if yes)
)
_draining = st.sampled_from((False, False, False, True))


@st.composite
def fleets(draw: st.DrawFn) -> list[NodeView]:
    present = draw(st.tuples(*[st.booleans()] * len(NODE_IDS)))
    nodes = []
    for node_id, here in zip(NODE_IDS, present, strict=True):
        if not here:
            continue
        slots, running = draw(st.tuples(st.integers(0, 4), st.integers(0, 5)))
        nodes.append(NodeView(id=node_id, labels=draw(_node_labels), skills=draw(_skill_sets),
                              slots=slots, running=running % (slots + 2),
                              draining=draw(_draining)))
    return draw(st.permutations(nodes))


@st.composite
def requirements(draw: st.DrawFn) -> TaskRequirements:
    labels = draw(_wanted_labels)
    return TaskRequirements(
        skill=draw(st.sampled_from(SKILLS)),
        labels=labels,
        node_id=draw(st.sampled_from(("",) * 14 + (*NODE_IDS, "n-gone"))),
        session_node=draw(st.sampled_from(("",) * 18 + NODE_IDS)),
    )


def wanted(req: TaskRequirements) -> str:
    return req.session_node or req.node_id


def contradictory(req: TaskRequirements) -> bool:
    # A pin naming another node than the one holding the task's session fits nowhere.
    return bool(req.session_node and req.node_id and req.session_node != req.node_id)


def feasible(req: TaskRequirements, n: NodeView) -> bool:
    return (
        not contradictory(req)
        and (not wanted(req) or n.id == wanted(req))
        and req.skill in n.skills
        and all(n.labels.get(k) == v for k, v in req.labels.items())
        and not n.draining
        and n.running < n.slots
    )


def load(n: NodeView) -> Fraction:
    return Fraction(n.running, max(1, n.slots))


@SETTINGS
@given(req=requirements(), nodes=fleets())
def test_chosen_node_satisfies_every_hard_constraint(
    req: TaskRequirements, nodes: list[NodeView]
) -> None:
    """A chosen node has the skill, every label, is not draining, has a free slot, and is
    the pinned/session node when one is given."""
    decision = place(req, nodes)
    if decision.node_id is None:
        return
    chosen = next(n for n in nodes if n.id == decision.node_id)
    assert req.skill in chosen.skills
    for key, value in req.labels.items():
        assert chosen.labels.get(key) == value
    assert not chosen.draining
    assert chosen.running < chosen.slots
    if wanted(req):
        assert chosen.id == wanted(req)
    assert decision.reason == ""


@SETTINGS
@given(req=requirements(), nodes=fleets())
def test_none_only_when_no_node_is_feasible_and_always_with_a_reason(
    req: TaskRequirements, nodes: list[NodeView]
) -> None:
    """place() refuses exactly when no node is feasible, and then says why."""
    decision = place(req, nodes)
    any_feasible = any(feasible(req, n) for n in nodes)
    assert (decision.node_id is not None) == any_feasible
    if decision.node_id is None:
        assert decision.reason.strip()


@SETTINGS
@given(req=requirements(), nodes=fleets())
def test_choice_is_least_loaded_with_ties_broken_by_id(
    req: TaskRequirements, nodes: list[NodeView]
) -> None:
    """Among feasible nodes the lowest running/slots wins; equal loads go to the smallest id."""
    decision = place(req, nodes)
    candidates = [n for n in nodes if feasible(req, n)]
    if not candidates:
        return
    lowest = min(load(n) for n in candidates)
    assert decision.node_id == min(n.id for n in candidates if load(n) == lowest)


@SETTINGS
@given(req=requirements(), nodes=fleets(), data=st.data())
def test_decision_is_deterministic_and_ignores_node_order(
    req: TaskRequirements, nodes: list[NodeView], data: st.DataObject
) -> None:
    """The same requirements and nodes give the same decision in any order, every time."""
    shuffled = data.draw(st.permutations(nodes))
    first = place(req, nodes)
    assert place(req, nodes) == first
    assert place(req, shuffled) == first
    assert place(req, iter(nodes)) == first


def test_no_node_connected() -> None:
    """With no node at all the reason says no node is connected."""
    assert place(TaskRequirements(skill="shell"), []) == Placement(None, "no node is connected")


def test_pinned_node_not_connected() -> None:
    """A pin to an absent node names that node, even when others could run the task."""
    decision = place(TaskRequirements(skill="shell", node_id="n-9"), [node("n-1")])
    assert decision.node_id is None
    assert decision.reason == "the pinned node n-9 is not connected"


def test_session_node_not_connected() -> None:
    """A session whose node is absent names the session's node."""
    decision = place(TaskRequirements(skill="shell", session_node="n-9"), [node("n-1")])
    assert decision.node_id is None
    assert decision.reason == "the session's node n-9 is not connected"


def test_session_node_and_an_agreeing_pin_place_there() -> None:
    """A pin that names the session's own node is no conflict: the task goes there."""
    nodes = [node("n-1"), node("n-2")]
    req = TaskRequirements(skill="shell", node_id="n-2", session_node="n-2")
    assert place(req, nodes).node_id == "n-2"


def test_pinned_node_is_used_even_when_more_loaded() -> None:
    """A pin overrides least-loaded choice."""
    nodes = [node("n-1", running=0), node("n-2", running=1)]
    assert place(TaskRequirements(skill="shell", node_id="n-2"), nodes).node_id == "n-2"


def test_no_node_offers_the_skill() -> None:
    """The reason names the missing skill."""
    decision = place(TaskRequirements(skill="browser"), [node("n-1", skills=("shell",))])
    assert decision.node_id is None
    assert decision.reason == "no connected node offers skill 'browser'"


def test_missing_label_names_key_and_value() -> None:
    """The reason names the first unmet label as key=value."""
    nodes = [node("n-1", os="linux"), node("n-2", os="mac", arch="x86")]
    decision = place(TaskRequirements(skill="shell", labels={"os": "mac", "arch": "arm"}),
                     nodes)
    assert decision.node_id is None
    assert decision.reason == "no connected node has label arch=arm"


def test_labels_must_all_hold_on_the_same_node() -> None:
    """Two nodes each carrying one wanted label do not together satisfy both."""
    nodes = [node("n-1", os="mac"), node("n-2", arch="arm")]
    decision = place(TaskRequirements(skill="shell", labels={"os": "mac", "arch": "arm"}),
                     nodes)
    assert decision.node_id is None
    assert "label" in decision.reason


def test_all_matching_nodes_draining() -> None:
    """When every otherwise matching node drains, the reason says so."""
    nodes = [node("n-1", draining=True), node("n-2", skills=("noop",))]
    decision = place(TaskRequirements(skill="shell"), nodes)
    assert decision == Placement(None, "every matching node is draining")


def test_all_matching_nodes_busy() -> None:
    """When every matching node's slots are in use, the reason says they are busy."""
    nodes = [node("n-1", slots=1, running=1), node("n-2", slots=0), node("n-3", draining=True)]
    decision = place(TaskRequirements(skill="shell"), nodes)
    assert decision == Placement(None, "every matching node is busy (all slots in use)")


def test_least_loaded_is_by_fraction_of_slots_not_count() -> None:
    """A big node with more tasks but a smaller share of its slots in use wins."""
    nodes = [node("n-1", slots=2, running=1), node("n-2", slots=8, running=2)]
    assert place(TaskRequirements(skill="shell"), nodes).node_id == "n-2"


@pytest.mark.parametrize("order", [("n-a", "n-b"), ("n-b", "n-a")])
def test_ties_go_to_the_smallest_id(order: tuple[str, str]) -> None:
    """Equally loaded nodes are chosen by id, whatever order they come in."""
    nodes = [node(i, slots=4, running=1) for i in order]
    assert place(TaskRequirements(skill="shell"), nodes).node_id == "n-a"


def test_a_pin_that_contradicts_the_session_node_is_refused_with_both_named() -> None:
    """A task pinned to one node whose session lives on another cannot be placed; both named."""
    nodes = [NodeView(id=n, labels={}, skills=frozenset({"shell"}), slots=4, running=0)
             for n in ("a", "b")]
    decision = place(TaskRequirements(skill="shell", node_id="a", session_node="b"), nodes)
    assert decision.node_id is None
    assert "node a" in decision.reason
    assert "node b" in decision.reason


def _sized(node_id: str, *, cpus: float, free: float, gpus: int = 0, gpus_free: int = 0,
           pool: str = "default") -> NodeView:
    return NodeView(id=node_id, labels={}, skills=frozenset({"shell"}), slots=4, running=0,
                    pool=pool, cpus=cpus, cpus_free=free, memory_mib=1024,
                    memory_free_mib=1024, gpus=gpus, gpus_free=gpus_free)


def test_resources_pick_a_node_with_enough_free() -> None:
    """A task needing 2 CPUs goes where 2 are free, not merely where 2 exist."""
    nodes = [_sized("n-a", cpus=4, free=1), _sized("n-b", cpus=4, free=3)]
    assert place(TaskRequirements(skill="shell", cpus=2), nodes) == Placement("n-b")


def test_more_than_any_node_has_is_said_plainly_and_busy_is_transient() -> None:
    """Needing more than any node's capacity names the largest; needing more than is free
    now is a 'busy' reason (not stored: it passes)."""
    nodes = [_sized("n-a", cpus=4, free=0, gpus=1, gpus_free=1)]
    never = place(TaskRequirements(skill="shell", gpus=2), nodes)
    assert never.reason == "no matching node has 2 GPUs (the most any has is 1)"
    later = place(TaskRequirements(skill="shell", cpus=2), nodes)
    assert later.reason.startswith("busy: no matching node has 2 CPU cores free now")


def test_pool_narrows_the_candidates() -> None:
    """A pool requirement places only on nodes of that pool, and says so when none is."""
    nodes = [_sized("n-a", cpus=2, free=2), _sized("n-b", cpus=2, free=2, pool="gpu")]
    assert place(TaskRequirements(skill="shell", pool="gpu"), nodes) == Placement("n-b")
    none = place(TaskRequirements(skill="shell", pool="arm"), nodes)
    assert none.reason == "no node of pool 'arm' is connected"


def _browsers(node_id: str, *, limit: int, open_: int, running: int = 0) -> NodeView:
    return NodeView(id=node_id, labels={}, skills=frozenset({"browser"}), slots=4,
                    running=running, session_limit=limit, sessions=open_)


def test_a_new_browser_session_goes_where_there_is_room_for_one() -> None:
    """Opening a session skips nodes at their session limit, even less loaded ones; other
    browser actions (of a session already pinned) ignore the limit."""
    nodes = [_browsers("n-a", limit=2, open_=2), _browsers("n-b", limit=2, open_=1, running=3)]
    assert place(TaskRequirements(skill="browser", new_session=True), nodes) == Placement("n-b")
    assert place(TaskRequirements(skill="browser"), nodes) == Placement("n-a")
    pinned = TaskRequirements(skill="browser", session_node="n-a")
    assert place(pinned, nodes) == Placement("n-a")


def test_every_browser_node_full_is_a_transient_reason() -> None:
    """No room anywhere: the task waits (a 'busy' reason, not stored) and is told how a
    session frees up."""
    nodes = [_browsers("n-a", limit=1, open_=1), _browsers("n-b", limit=3, open_=3)]
    why = place(TaskRequirements(skill="browser", new_session=True), nodes).reason
    assert why.startswith("busy: every matching node is at its browser session limit")
    assert "cortex browser close" in why

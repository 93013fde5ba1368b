"""The task state machine table: every (state, event) pair, retries, and a stateful model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.core.states import (
    FINISH_EVENT,
    TERMINAL,
    TRANSITIONS,
    Event,
    State,
    is_terminal,
    next_state,
    should_retry,
)
from cortex.errors import Conflict, IllegalTransition

S, E = State, Event

# The table written out again from the module's diagram, so a change to TRANSITIONS has to
# be made twice: once on purpose in src/, once here.
EXPECTED: dict[tuple[State, Event], State] = {
    (S.QUEUED, E.ASSIGN): S.ASSIGNED,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.QUEUED, E.TIME_OUT): S.TIMED_OUT,
    (S.QUEUED, E.FAIL): S.FAILED,
    (S.ASSIGNED, E.START): S.RUNNING,
    (S.ASSIGNED, E.SUCCEED): S.SUCCEEDED,
    (S.ASSIGNED, E.FAIL): S.FAILED,
    (S.ASSIGNED, E.CANCEL): S.CANCELLED,
    (S.ASSIGNED, E.TIME_OUT): S.TIMED_OUT,
    (S.ASSIGNED, E.LOSE): S.LOST,
    (S.RUNNING, E.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.TIME_OUT): S.TIMED_OUT,
    (S.RUNNING, E.LOSE): S.LOST,
    (S.LOST, E.RETRY): S.QUEUED,
    (S.FAILED, E.RETRY): S.QUEUED,
}

ALL_PAIRS = list(itertools.product(State, Event))
RETRYABLE = {S.LOST, S.FAILED}
NEVER_RETRY = {S.SUCCEEDED, S.CANCELLED, S.TIMED_OUT}


def test_table_is_exactly_the_documented_one() -> None:
    """TRANSITIONS holds exactly the documented moves, no more and no fewer."""
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda v: v.name.lower())
def test_every_pair_moves_or_raises_naming_state_and_event(state: State, event: Event) -> None:
    """Each (state, event) either gives the documented state or raises naming both."""
    if (state, event) in EXPECTED:
        assert next_state(state, event) is EXPECTED[(state, event)]
        return
    with pytest.raises(IllegalTransition) as info:
        next_state(state, event)
    message = str(info.value)
    assert repr(state.label) in message
    assert repr(event.value) in message


def test_illegal_transition_is_a_conflict_without_a_chained_key_error() -> None:
    """An illegal move is a Conflict (the documented tree) and hides the dict lookup."""
    with pytest.raises(Conflict) as info:
        next_state(S.SUCCEEDED, E.START)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("state", sorted(TERMINAL), ids=lambda s: s.label)
def test_terminal_states_accept_only_retry_and_only_when_retryable(state: State) -> None:
    """Terminal states take no event but RETRY, and only LOST/FAILED take that (to QUEUED)."""
    accepted = {e for e in Event if (state, e) in TRANSITIONS}
    if state in RETRYABLE:
        assert accepted == {E.RETRY}
        assert next_state(state, E.RETRY) is S.QUEUED
    else:
        assert accepted == set()


def test_terminal_set_and_is_terminal_agree() -> None:
    """is_terminal is true for exactly the five end states and false for the three live ones."""
    assert {s for s in State if is_terminal(s)} == set(TERMINAL)
    assert set(State) - set(TERMINAL) == {S.QUEUED, S.ASSIGNED, S.RUNNING}


def test_live_states_can_always_reach_an_end() -> None:
    """Every live state has a CANCEL and a TIME_OUT move into a terminal state."""
    for state in (S.QUEUED, S.ASSIGNED, S.RUNNING):
        assert is_terminal(next_state(state, E.CANCEL))
        assert is_terminal(next_state(state, E.TIME_OUT))


def test_states_match_protocol_task_state_numbers() -> None:
    """State values equal the protocol's TaskState numbers, so translating is a cast."""
    for state in State:
        assert pb.TaskState.Value(state.name) == state.value
    assert set(pb.TaskState.keys()) - {s.name for s in State} == {"TASK_STATE_UNSPECIFIED"}


@pytest.mark.parametrize("final", sorted(FINISH_EVENT), ids=lambda s: s.label)
def test_finish_event_leads_a_running_task_to_the_reported_state(final: State) -> None:
    """A node's final report state maps to the event that moves RUNNING to that state."""
    assert next_state(S.RUNNING, FINISH_EVENT[final]) is final


def test_finish_event_covers_every_terminal_state() -> None:
    """Every terminal state a node can report has a finish event."""
    assert set(FINISH_EVENT) == set(TERMINAL)


@pytest.mark.parametrize("state", sorted(NEVER_RETRY), ids=lambda s: s.label)
def test_success_cancel_and_timeout_never_retry(state: State) -> None:
    """SUCCEEDED, CANCELLED and TIMED_OUT are final whatever the policy."""
    for attempt, max_attempts, on_failure in itertools.product(
        range(0, 6), range(0, 6), (False, True)
    ):
        assert not should_retry(
            state, attempt=attempt, max_attempts=max_attempts, retry_on_failure=on_failure
        )


@pytest.mark.parametrize("state", [S.QUEUED, S.ASSIGNED, S.RUNNING], ids=lambda s: s.label)
def test_live_states_never_retry(state: State) -> None:
    """A task that has not ended is never retried."""
    assert not should_retry(state, attempt=1, max_attempts=10, retry_on_failure=True)


def test_lost_retries_while_attempts_remain() -> None:
    """LOST retries on attempts 1..max-1 and stops at max, with or without retry_on_failure."""
    for on_failure in (False, True):
        assert should_retry(S.LOST, attempt=1, max_attempts=3, retry_on_failure=on_failure)
        assert should_retry(S.LOST, attempt=2, max_attempts=3, retry_on_failure=on_failure)
        assert not should_retry(S.LOST, attempt=3, max_attempts=3, retry_on_failure=on_failure)
        assert not should_retry(S.LOST, attempt=4, max_attempts=3, retry_on_failure=on_failure)


def test_failed_retries_only_with_retry_on_failure() -> None:
    """FAILED retries only when retry_on_failure is set and attempts remain."""
    assert not should_retry(S.FAILED, attempt=1, max_attempts=3, retry_on_failure=False)
    assert should_retry(S.FAILED, attempt=1, max_attempts=3, retry_on_failure=True)
    assert not should_retry(S.FAILED, attempt=3, max_attempts=3, retry_on_failure=True)


@pytest.mark.parametrize("max_attempts", [0, 1])
def test_max_attempts_zero_or_one_means_no_retry(max_attempts: int) -> None:
    """max_attempts 0 (unset) and 1 both mean a single attempt."""
    assert not should_retry(S.LOST, attempt=1, max_attempts=max_attempts, retry_on_failure=True)
    assert not should_retry(S.FAILED, attempt=1, max_attempts=max_attempts, retry_on_failure=True)


def test_should_retry_only_for_states_the_table_lets_retry() -> None:
    """Whenever should_retry says yes, the table has a RETRY move for that state."""
    for state, attempt, max_attempts, on_failure in itertools.product(
        State, range(1, 5), range(0, 5), (False, True)
    ):
        if should_retry(
            state, attempt=attempt, max_attempts=max_attempts, retry_on_failure=on_failure
        ):
            assert next_state(state, E.RETRY) is S.QUEUED
            assert attempt + 1 <= max_attempts


class TaskLifecycle(RuleBasedStateMachine):
    """A model task driven by random events the way the hub drives one.

    Events the table forbids must raise and leave the task alone; reaching a terminal state
    consults should_retry, and RETRY is only applied when it says so.
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = S.QUEUED
        self.attempt = 1
        self.max_attempts = 1
        self.retry_on_failure = False
        self.final: State | None = None     # set once a terminal state will not be retried

    @initialize(max_attempts=st.integers(0, 6), retry_on_failure=st.booleans())
    def policy(self, max_attempts: int, retry_on_failure: bool) -> None:
        self.max_attempts = max_attempts
        self.retry_on_failure = retry_on_failure

    def _allowed_retry(self) -> bool:
        return should_retry(
            self.state,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            retry_on_failure=self.retry_on_failure,
        )

    @rule(event=st.sampled_from(Event))
    def apply(self, event: Event) -> None:
        before = self.state
        if event is E.RETRY and is_terminal(before) and not self._allowed_retry():
            return      # the hub never sends RETRY when the policy says no
        try:
            after = next_state(before, event)
        except IllegalTransition as exc:
            refusal = str(exc)
        else:
            refusal = ""
        if refusal:
            assert (before, event) not in TRANSITIONS
            assert repr(before.label) in refusal
            assert repr(event.value) in refusal
            return
        assert self.final is None, "an event moved a task out of its final state"
        if is_terminal(before):
            assert event is E.RETRY
            assert after is S.QUEUED
            assert before in RETRYABLE
            self.attempt += 1       # as the hub does: each retry is the next attempt
        self.state = after
        if is_terminal(after) and not self._allowed_retry():
            self.final = after

    @invariant()
    def attempts_stay_within_the_policy(self) -> None:
        # Attempts only grow one per allowed retry, so this bounds what should_retry allows.
        assert 1 <= self.attempt <= max(1, self.max_attempts)

    @invariant()
    def final_outcomes_never_retry(self) -> None:
        if self.state in NEVER_RETRY:
            assert not self._allowed_retry()
            assert self.final is self.state

    @invariant()
    def finished_tasks_never_move_again(self) -> None:
        if self.final is not None:
            assert self.state is self.final


TaskLifecycle.TestCase.settings = settings(max_examples=200, deadline=None,
                                           stateful_step_count=30)
test_task_lifecycle = TaskLifecycle.TestCase

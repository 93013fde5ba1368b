"""The task state machine: one table of (state, event) -> state, one function applying it.

    queued ─assign─▶ assigned ─start─▶ running ─succeed─▶ succeeded
       │                │                 ├─fail────▶ failed ──retry──▶ queued (attempt+1)
       │                │                 ├─cancel──▶ cancelled
       └── cancel / time_out / (fail) ────┼─time_out▶ timed_out
                                          └─lose────▶ lost ────retry──▶ queued (attempt+1)

Values match the protocol's ``TaskState`` numbers so translation is a cast.
"""

from __future__ import annotations

import enum

from cortex.errors import IllegalTransition

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Event",
    "State",
    "is_terminal",
    "next_state",
    "should_retry",
]


class State(enum.IntEnum):
    QUEUED = 1
    ASSIGNED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6
    TIMED_OUT = 7
    LOST = 8

    @property
    def label(self) -> str:
        return self.name.lower()


class Event(enum.Enum):
    ASSIGN = "assign"        # placed on a node
    START = "start"          # the node started the process
    SUCCEED = "succeed"      # exit code 0
    FAIL = "fail"            # non-zero exit, spawn error, or no placement possible
    CANCEL = "cancel"        # a client asked, or the node confirmed a cancel
    TIME_OUT = "time_out"    # the deadline passed
    LOSE = "lose"            # the node went silent past the bound while holding it
    RETRY = "retry"          # a new attempt of a lost (or failed, if allowed) task


Q, A, R = State.QUEUED, State.ASSIGNED, State.RUNNING

TRANSITIONS: dict[tuple[State, Event], State] = {
    (Q, Event.ASSIGN): A,
    (Q, Event.CANCEL): State.CANCELLED,
    (Q, Event.TIME_OUT): State.TIMED_OUT,
    (Q, Event.FAIL): State.FAILED,
    (A, Event.START): R,
    (A, Event.SUCCEED): State.SUCCEEDED,
    (A, Event.FAIL): State.FAILED,
    (A, Event.CANCEL): State.CANCELLED,
    (A, Event.TIME_OUT): State.TIMED_OUT,
    (A, Event.LOSE): State.LOST,
    (R, Event.SUCCEED): State.SUCCEEDED,
    (R, Event.FAIL): State.FAILED,
    (R, Event.CANCEL): State.CANCELLED,
    (R, Event.TIME_OUT): State.TIMED_OUT,
    (R, Event.LOSE): State.LOST,
    (State.LOST, Event.RETRY): Q,
    (State.FAILED, Event.RETRY): Q,
}

TERMINAL: frozenset[State] = frozenset(
    {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.TIMED_OUT, State.LOST}
)

# The events a node's final report maps to.
FINISH_EVENT: dict[State, Event] = {
    State.SUCCEEDED: Event.SUCCEED,
    State.FAILED: Event.FAIL,
    State.CANCELLED: Event.CANCEL,
    State.TIMED_OUT: Event.TIME_OUT,
    State.LOST: Event.LOSE,
}


def next_state(state: State, event: Event) -> State:
    """The state after `event`, or IllegalTransition naming both when the table forbids it."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"a task in state {state.label!r} cannot take event {event.value!r}"
        ) from None


def is_terminal(state: State) -> bool:
    return state in TERMINAL


def should_retry(
    state: State, *, attempt: int, max_attempts: int, retry_on_failure: bool
) -> bool:
    """Whether a task that just reached `state` on `attempt` gets another attempt."""
    if attempt >= max(1, max_attempts):
        return False
    return state is State.LOST or (state is State.FAILED and retry_on_failure)

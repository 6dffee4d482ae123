"""The job transition table: every legal move is accepted, every other one refused."""

from __future__ import annotations

import itertools

import pytest

from common.errors import Conflict, IllegalTransition
from common.states import (
    ON_NODE,
    TERMINAL,
    TRANSITIONS,
    JobState,
    NodeState,
    can_transition,
    check_transition,
)

Q = JobState.QUEUED
A = JobState.ASSIGNED
R = JobState.RUNNING
P = JobState.PAUSED
C = JobState.COMPLETED
F = JobState.FAILED
X = JobState.CANCELLED
T = JobState.TIMED_OUT

NON_TERMINAL = (Q, A, R, P)


def _diagram() -> set[tuple[JobState, JobState]]:
    """The edges of the diagram in DESIGN.md, written out independently of the table."""
    edges = {(Q, A), (A, R), (R, C), (R, F), (R, T), (R, P), (P, R)}
    # any non-terminal state -> cancelled
    edges |= {(s, X) for s in NON_TERMINAL}
    # node lost / timeout / start failure with retries left
    edges |= {(s, Q) for s in (A, R, P)}
    # manual retry
    edges |= {(s, Q) for s in (F, X, T)}
    # documented extras: start failure with no retries left, scheduler-enforced timeout,
    # and a queued job whose dependency failed for good
    edges |= {(A, F), (A, T), (P, F), (P, T), (Q, F)}
    # a paused job that ended before its pause reached the agent
    edges |= {(P, C)}
    return edges


LEGAL = _diagram()
ALL_PAIRS = list(itertools.product(JobState, JobState))


def _pair_id(pair: tuple[JobState, JobState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_there_are_eight_job_states_and_four_node_states() -> None:
    assert {s.value for s in JobState} == {
        "queued",
        "assigned",
        "running",
        "paused",
        "completed",
        "failed",
        "cancelled",
        "timed_out",
    }
    assert {s.value for s in NodeState} == {"idle", "busy", "unhealthy", "offline"}


def test_table_has_an_entry_for_every_state() -> None:
    assert set(TRANSITIONS) == set(JobState)


def test_table_matches_the_design_diagram_exactly() -> None:
    table = {(old, new) for old, news in TRANSITIONS.items() for new in news}
    assert table == LEGAL


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=[_pair_id(p) for p in ALL_PAIRS])
def test_every_pair_of_states_is_accepted_exactly_when_the_table_lists_it(
    pair: tuple[JobState, JobState],
) -> None:
    old, new = pair
    if pair in LEGAL:
        assert can_transition(old, new)
        check_transition(old, new)
    else:
        assert not can_transition(old, new)
        with pytest.raises(IllegalTransition) as info:
            check_transition(old, new)
        assert info.value.details == {"from": old.value, "to": new.value}
        assert info.value.status == 409
        assert isinstance(info.value, Conflict)


def test_no_state_transitions_to_itself() -> None:
    for state in JobState:
        assert not can_transition(state, state)


def test_terminal_states_are_completed_failed_cancelled_and_timed_out() -> None:
    assert {C, F, X, T} == TERMINAL


def test_completed_is_final_and_other_terminal_states_only_go_back_to_the_queue() -> None:
    assert TRANSITIONS[C] == frozenset()
    for state in (F, X, T):
        assert TRANSITIONS[state] == {Q}


def test_every_non_terminal_state_can_be_cancelled() -> None:
    for state in NON_TERMINAL:
        assert can_transition(state, X)
    for state in TERMINAL:
        assert not can_transition(state, X)


def test_states_that_hold_node_resources_are_assigned_running_and_paused() -> None:
    assert {A, R, P} == ON_NODE
    assert not ON_NODE & TERMINAL


def test_a_queued_job_must_be_assigned_before_it_runs_or_ends() -> None:
    # It may fail without running: when a job it depends on failed for good.
    for new in (R, P, C, T):
        with pytest.raises(IllegalTransition):
            check_transition(Q, new)


def test_illegal_transition_message_names_both_states() -> None:
    with pytest.raises(IllegalTransition, match="completed to running"):
        check_transition(C, R)
    assert IllegalTransition("completed", "running").code == "illegal_transition"

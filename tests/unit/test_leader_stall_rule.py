"""The stall rule of the leader lock's thread: it keeps the lock's session while the
scheduler's event loop has run lately, and lets it go once the loop has been silent
for the stall budget."""

from __future__ import annotations

from scheduler.leadership import (
    IDLE_SESSION_TIMEOUT_MS,
    LEASE_S,
    PING_S,
    STALL_S,
    keeps_session,
)


def test_a_loop_that_ticked_just_now_keeps_the_session() -> None:
    assert keeps_session(100.0, 100.0)
    assert keeps_session(100.0, 100.0 + PING_S)


def test_a_loop_busy_for_seconds_short_of_the_budget_keeps_the_session() -> None:
    assert keeps_session(100.0, 100.0 + STALL_S - 0.001)


def test_a_loop_silent_for_the_whole_budget_lets_the_session_go() -> None:
    assert not keeps_session(100.0, 100.0 + STALL_S)
    assert not keeps_session(100.0, 100.0 + 10 * STALL_S)


def test_the_budget_is_the_one_given() -> None:
    assert keeps_session(100.0, 100.9, stall_s=1.0)
    assert not keeps_session(100.0, 101.0, stall_s=1.0)


def test_the_budget_outlasts_the_idle_timeout_and_the_lease() -> None:
    # A busy loop must outlast what ends a hung process's lead, or the thread would
    # bring back the very loss it exists to prevent.
    assert STALL_S > IDLE_SESSION_TIMEOUT_MS / 1000
    assert STALL_S > LEASE_S
    assert STALL_S > 10 * PING_S

"""The leader lock on a real PostgreSQL database, in this process: its own thread keeps
it while the event loop is busy for longer than the server lets a session idle, lets it
go once the loop stalls past the budget, and ends with ``close``."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from scheduler.leadership import IDLE_SESSION_TIMEOUT_MS, LEASE_S, LeaderLock
from tests.support import wait_until

pytestmark = pytest.mark.stores("postgresql")

#: a stall budget short enough for a test
SHORT_STALL_S = 1.0


def hog_the_loop(seconds: float) -> None:
    """Keep this thread, the event loop's, busy computing (holding the GIL whenever
    it may) for ``seconds``: no task of the loop runs meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def lock_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "berth-leader-lock"]


@pytest.fixture
async def locks(pg_dsn: str) -> AsyncIterator[Callable[..., LeaderLock]]:
    """Makes leader locks on the test's database; closes them all afterwards."""
    made: list[LeaderLock] = []

    def make(name: str, **kw: float) -> LeaderLock:
        lock = LeaderLock(pg_dsn, name, f"http://{name}", **kw)
        made.append(lock)
        return lock

    yield make
    for lock in made:
        await lock.close()


async def test_a_loop_busy_past_the_idle_timeout_and_lease_keeps_the_lock(
    locks: Callable[..., LeaderLock],
) -> None:
    a, b = locks("a"), locks("b")
    assert await a.try_take()
    # The event loop does not run for longer than the server lets a session idle
    # and than the lease: the lock's thread pings meanwhile.
    hog_the_loop(IDLE_SESSION_TIMEOUT_MS / 1000 + LEASE_S)
    assert a.held and a.fresh()
    assert not await b.try_take()
    await a.note("leader", 1, 0)
    assert a.held and a.fresh()


async def test_a_loop_stalled_past_the_budget_lets_the_lock_go(
    locks: Callable[..., LeaderLock],
) -> None:
    a, b = locks("a", stall_s=SHORT_STALL_S), locks("b")
    assert await a.try_take()
    hog_the_loop(SHORT_STALL_S + 1.0)
    assert not a.held and not a.fresh()
    await wait_until(b.try_take, timeout=10)
    # The stalled one, running again, does not get it back while the other holds it.
    assert not await a.try_take()


async def test_closing_lets_the_lock_go_and_ends_its_thread(
    locks: Callable[..., LeaderLock],
) -> None:
    before = len(lock_threads())
    a, b = locks("a"), locks("b")
    assert await a.try_take()
    assert len(lock_threads()) == before + 1
    await a.close()
    assert not a.held
    assert len(lock_threads()) == before
    await wait_until(b.try_take, timeout=10)
    assert not await a.try_take()
    # Closing twice is harmless.
    await a.close()

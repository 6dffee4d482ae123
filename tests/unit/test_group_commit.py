"""The group commit on its own: batching, failure and retry, recovery, close.

The backend is a dict: a batch's rows are its groups' limits, a transaction is one
``update``; a write can be held open or made to fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from common.errors import Unavailable
from scheduler.store.commit import GroupCommit
from scheduler.store.records import Changes
from tests.support import wait_until


class DictBackend:
    def __init__(self) -> None:
        self.table: dict[str, int] = {}
        #: every committed transaction's rows, in order
        self.transactions: list[dict[str, int]] = []
        #: while set, a write raises OSError with this message
        self.failing: str | None = None
        #: while not set, a write waits (the batch stays in flight)
        self.gate = asyncio.Event()
        self.gate.set()
        #: set when a write has begun
        self.writing = asyncio.Event()

    def encode(self, changes: Changes) -> dict[str, int]:
        return dict(changes.groups)

    async def write(self, rows: dict[str, int]) -> None:
        self.writing.set()
        await self.gate.wait()
        if self.failing is not None:
            raise OSError(self.failing)
        self.table.update(rows)
        self.transactions.append(rows)


def limits(**groups: int) -> Changes:
    return Changes(groups=dict(groups))


@pytest.fixture
async def backend() -> DictBackend:
    return DictBackend()


@pytest.fixture
async def group(backend: DictBackend) -> AsyncIterator[GroupCommit[dict[str, int]]]:
    g = GroupCommit(backend.encode, backend.write, retry_s=0.02)
    g.start()
    yield g
    backend.failing = None
    backend.gate.set()
    await g.close()


async def test_concurrent_commits_share_one_transaction(
    group: GroupCommit[dict[str, int]], backend: DictBackend
) -> None:
    backend.gate.clear()
    first = asyncio.create_task(group.commit(limits(g0=0)))
    await backend.writing.wait()
    # While the first batch is written, a hundred more commits are staged.
    rest = [asyncio.create_task(group.commit(limits(**{f"g{i}": i}))) for i in range(1, 101)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in rest)
    backend.gate.set()
    await asyncio.gather(first, *rest)
    assert len(backend.transactions) == 2
    assert len(backend.transactions[1]) == 100
    assert backend.table == {f"g{i}": i for i in range(101)}


async def test_an_empty_commit_returns_at_once_and_writes_nothing(
    group: GroupCommit[dict[str, int]], backend: DictBackend
) -> None:
    await group.commit(Changes())
    assert backend.transactions == []


async def test_a_failing_batch_raises_unavailable_and_is_written_ahead_of_newer_ones(
    group: GroupCommit[dict[str, int]], backend: DictBackend
) -> None:
    backend.failing = "database or disk is full"
    a, b = limits(x=1, y=1), limits(y=2)
    with pytest.raises(Unavailable) as err:
        await group.commit(a)
    assert "database or disk is full" in err.value.message
    assert group.failure == "database or disk is full"
    # Still failing: the next commit fails too, and both are kept.
    with pytest.raises(Unavailable):
        await group.commit(b)
    assert backend.transactions == []
    assert group.take_recovered() == []

    backend.failing = None
    c = limits(z=3)
    await group.commit(c)
    assert group.failure is None
    # One transaction wrote what the failed batches kept and the new change; the newer
    # version of y won.
    assert backend.transactions[-1] == {"x": 1, "y": 2, "z": 3}
    recovered = group.take_recovered()
    assert recovered[0] is a and recovered[1] is b and len(recovered) == 2
    assert group.take_recovered() == []


async def test_a_failing_store_retries_on_its_own_and_hands_back_what_it_wrote(
    group: GroupCommit[dict[str, int]], backend: DictBackend
) -> None:
    backend.failing = "disk I/O error"
    a = limits(x=1)
    with pytest.raises(Unavailable):
        await group.commit(a)
    backend.failing = None
    # Nobody commits: the writer tries again by itself.
    await wait_until(lambda: group.failure is None, timeout=5, interval=0.01)
    assert backend.table == {"x": 1}
    assert group.take_recovered() == [a]


async def test_a_batch_in_flight_stays_pending_until_its_transaction_commits(
    group: GroupCommit[dict[str, int]], backend: DictBackend
) -> None:
    backend.gate.clear()
    task = asyncio.create_task(group.commit(limits(x=1)))
    await backend.writing.wait()
    staged = asyncio.create_task(group.commit(limits(x=2)))
    await asyncio.sleep(0)
    pending = group.pending()
    # Newest first: the staged batch, then the one in flight.
    assert [p.groups for p in pending] == [{"x": 2}, {"x": 1}]
    backend.gate.set()
    await asyncio.gather(task, staged)
    assert [p.groups for p in group.pending()] == [{}]


async def test_a_failed_batch_stays_pending_while_kept(
    group: GroupCommit[dict[str, int]], backend: DictBackend
) -> None:
    backend.failing = "full"
    with pytest.raises(Unavailable):
        await group.commit(limits(x=1))
    assert any(p.groups == {"x": 1} for p in group.pending())


async def test_close_writes_what_is_staged_and_then_refuses_commits(
    backend: DictBackend,
) -> None:
    group = GroupCommit(backend.encode, backend.write, retry_s=0.02)
    group.start()
    backend.gate.clear()
    first = asyncio.create_task(group.commit(limits(x=1)))
    await backend.writing.wait()
    second = asyncio.create_task(group.commit(limits(y=2)))
    await asyncio.sleep(0)
    closing = asyncio.create_task(group.close())
    await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(first, second, closing)
    assert backend.table == {"x": 1, "y": 2}
    with pytest.raises(Unavailable):
        await group.commit(limits(z=3))


async def test_close_while_failing_tries_once_more_and_writes_what_was_kept(
    backend: DictBackend,
) -> None:
    group = GroupCommit(backend.encode, backend.write, retry_s=3600)
    group.start()
    backend.failing = "full"
    with pytest.raises(Unavailable):
        await group.commit(limits(x=1))
    backend.failing = None
    # The next try is an hour away; close does not wait for it.
    await asyncio.wait_for(group.close(), timeout=5)
    assert backend.table == {"x": 1}
    assert group.failure is None

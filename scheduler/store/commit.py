"""Group commit: many callers' changes, one transaction, whatever the backend.

Callers stage ``Changes`` and await the commit of the batch that holds them. One
writer task takes everything staged while the previous transaction was written and
writes it as the next one, so durability costs one transaction per batch, not one per
change. The backend only turns a batch into rows (``encode``, on the event loop,
between two awaits, so no record is seen half-changed) and writes those rows in one
transaction (``write``).

On failure (the disk is full, the file is gone, the server is away) the batch's
waiters get ``Unavailable``, but its changes stay staged, ahead of newer ones (a newer
version of the same record wins), and are written by the next batch that succeeds:
the scheduler's memory already holds them. While writes fail ``failure`` says why,
and the writer tries again every ``retry_s`` seconds on its own, waited on or not, so
that memory and disk converge once the cause is gone. The callers' change sets of the
failed batches are then handed out once by ``take_recovered``, oldest first.

Until a batch's transaction has committed its changes stay visible in ``pending``
(staged, in flight, or kept after a failure), so a reader that looks there first and
then at the database never misses the newest version of a record.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from common.errors import BerthError, Unavailable
from scheduler.store.records import Changes

log = logging.getLogger(__name__)

#: while writes fail, how often what is staged is tried again (seconds)
RETRY_S = 1.0

Rows = TypeVar("Rows")

#: upper bounds of the buckets of a batch's transaction time (seconds) ...
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: ... and of the callers' commits it held
COMMIT_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Tally:
    """Observations counted into fixed buckets: what a histogram metric is made from,
    read at scrape time (the store knows no metrics library)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: per bucket, the last one past every bound
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        # A value equal to a bound belongs to that bound's bucket (Prometheus' "le").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class CommitStats:
    """Every batch tried since the start: its transaction time, its size, failures."""

    __slots__ = ("batch", "failures", "seconds")

    def __init__(self) -> None:
        self.seconds = Tally(COMMIT_SECONDS_BUCKETS)
        self.batch = Tally(COMMIT_BATCH_BUCKETS)
        self.failures = 0


class _Batch:
    __slots__ = ("changes", "sets", "waiters")

    def __init__(self) -> None:
        #: everything this batch writes, merged (last write of a record wins)
        self.changes = Changes()
        #: the change sets callers committed into this batch, in order
        self.sets: list[Changes] = []
        self.waiters: list[asyncio.Future[None]] = []


class GroupCommit(Generic[Rows]):
    """Batches commits and writes them through ``write``, one transaction at a time.

    Parameters:
        encode: turns a batch's merged changes into the backend's rows; runs on the
            event loop.
        write: writes those rows in one transaction; raises when it could not.
        retry_s: while writes fail, the pause between two tries (default ``RETRY_S``).
    """

    def __init__(
        self,
        encode: Callable[[Changes], Rows],
        write: Callable[[Rows], Awaitable[None]],
        *,
        retry_s: float = RETRY_S,
    ) -> None:
        self._encode = encode
        self._write = write
        self.retry_s = retry_s
        #: why writes fail at the moment (what the last try said), None while they succeed
        self.failure: str | None = None
        #: called once writes succeed again, before the waiters of that batch return
        self._staged = _Batch()
        self._in_flight: Changes | None = None
        #: change sets of failed batches, oldest first, not written yet
        self._failed: list[Changes] = []
        #: change sets of failed batches written since, oldest first, not yet taken
        self._recovered: list[Changes] = []
        self._wake: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        #: while set, nothing is written and commits fail with it (see ``discard``)
        self._discarding: BerthError | None = None
        self.stats = CommitStats()

    def start(self) -> None:
        """Start the writer task (on the running event loop)."""
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="berth-store-writer")

    async def commit(self, changes: Changes) -> None:
        """Stage ``changes`` and return once the batch holding them is committed.

        Raises Unavailable when that batch could not be written (the changes stay
        staged and go out with the next batch) or when the store is closed."""
        await self.stage(changes)

    def stage(self, changes: Changes) -> asyncio.Future[None]:
        """Stage ``changes`` now (reads see them from this moment); the future is done
        once the batch holding them is committed, as ``commit`` describes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not changes:
            fut.set_result(None)
            return fut
        if self._closing or self._wake is None:
            fut.set_exception(Unavailable("the store is closed"))
            return fut
        if self._discarding is not None:
            fut.set_exception(self._discarding)
            return fut
        self._staged.changes.merge(changes)
        self._staged.sets.append(changes)
        self._staged.waiters.append(fut)
        self._wake.set()
        return fut

    def discard(self, why: BerthError) -> None:
        """Drop everything not written yet, failing its waiters with ``why``, and refuse
        what is staged from now on until ``resume``: a scheduler that lost the lead
        must not write what it decided while it led (its memory is loaded afresh)."""
        self._discarding = why
        staged, self._staged = self._staged, _Batch()
        self._failed = []
        self._recovered = []
        self.failure = None
        for w in staged.waiters:
            if not w.done():
                w.set_exception(why)

    def resume(self) -> None:
        """Take commits again (see ``discard``)."""
        self._discarding = None

    def take_recovered(self) -> list[Changes]:
        """Change sets whose commit failed and that have been written since, oldest
        first; each is returned once."""
        out, self._recovered = self._recovered, []
        return out

    def pending(self) -> list[Changes]:
        """What is not committed yet, newest first: the staged batch (which holds what
        failed batches kept) and the batch in flight."""
        if self._in_flight is None:
            return [self._staged.changes]
        return [self._staged.changes, self._in_flight]

    async def close(self) -> None:
        """Write what is staged (one last try when failing) and stop the writer."""
        self._closing = True
        if self._closed is not None:
            self._closed.set()
        if self._wake is not None:
            self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    async def _write_loop(self) -> None:
        assert self._wake is not None and self._closed is not None
        while True:
            if self.failure is not None and not self._closing:
                # Failing: try again at a steady pace, whether or not anyone waits,
                # instead of at every commit.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_s):
                        await self._closed.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            batch, self._staged = self._staged, _Batch()
            if batch.changes or batch.waiters:
                await self._write_batch(batch)
            if self._closing and not self._staged.waiters:
                if self._staged.changes:
                    log.error("stopping with changes that could not be written: %s", self.failure)
                return

    async def _write_batch(self, batch: _Batch) -> None:
        # The batch stays visible to readers until its transaction has committed (or,
        # failed, until its changes are staged again): no window shows an older row.
        self._in_flight = batch.changes
        started = time.perf_counter()
        try:
            rows = self._encode(batch.changes)
            await self._write(rows)
        except Exception as e:  # the disk is full, the file is gone, ...
            self.stats.failures += 1
            self._failed_batch(batch, e)
            return
        finally:
            self._in_flight = None
        self.stats.seconds.add(time.perf_counter() - started)
        self.stats.batch.add(len(batch.sets))
        if self.failure is not None:
            log.warning("the state is written again (it failed: %s)", self.failure)
            self.failure = None
            self._recovered.extend(self._failed)
            self._failed = []
        for w in batch.waiters:
            if not w.done():
                w.set_result(None)

    def _failed_batch(self, batch: _Batch, e: Exception) -> None:
        if self._discarding is not None:
            for w in batch.waiters:
                if not w.done():
                    w.set_exception(self._discarding)
            return
        if self.failure is None:
            log.error("commit failed, retrying every %gs: %s", self.retry_s, e)
        self.failure = str(e) or type(e).__name__
        # Memory holds these changes already: keep them, ahead of what was staged
        # since (newer versions of the same records win), for the next batch.
        batch.changes.merge(self._staged.changes)
        self._staged.changes = batch.changes
        self._failed.extend(batch.sets)
        err = Unavailable(
            f"the state could not be written: {self.failure}", {"cause": self.failure}
        )
        for w in batch.waiters:
            if not w.done():
                w.set_exception(err)

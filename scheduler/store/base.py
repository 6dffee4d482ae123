"""The store interface: what the scheduler persists and how it reads it back.

The scheduler's in-memory state is authoritative while it runs; the store makes every
acknowledged change survive a crash. Changes are grouped (``scheduler.store.commit``):
many mutations are staged and written in one transaction, and each caller awaits the
commit of the batch that holds its change before it answers its client. A backend
(``sqlite``, later ``postgres``) only encodes a batch into rows, writes those rows in
one transaction, and reads.

What a batch's write means, per table (every backend writes it so):

========================  ============  =============================================
Changes field             table         write
========================  ============  =============================================
jobs                      jobs          upsert by id (last write wins), with the
                                        columns of ``job_columns``
nodes                     nodes         upsert by id
events                    events        insert-once by index (indexes only grow: an
                                        append that a retried batch cannot break)
idempotency               idempotency   insert-once by key
tokens                    tokens        upsert by digest
revoked_tokens            tokens        delete by digest, after ``tokens``
logs                      logs          insert-once by (job id, attempt, offset)
groups                    groups        upsert by name
audit                     audit         append
blob_holds                blob_holds    per digest: delete its rows, insert the holds
                                        given (the last write of a digest wins)
forgotten_nodes           nodes         delete by id, after ``nodes``
schedules                 schedules     upsert by name
deleted_schedules         schedules     delete by name, after ``schedules``
owners                    owners        upsert by name
secrets                   secrets       upsert by name
deleted_secrets           secrets       delete by name, after ``secrets``
history                   history       upsert by (tier, t)
history_cut               history       delete by tier the rows before a time, after
                                        ``history``
usage                     usage         insert-once by (job id, attempt, t)
usage_thin                usage         per (job id, attempt): past ``USAGE_KEPT``
                                        rows, delete every other one, after ``usage``
========================  ============  =============================================

The history and usage tables are read by the API straight from the store (by every
scheduler sharing it); a standby does not follow them into memory. A history row's
document is its sample's JSON, zlib-compressed (``history_doc``).

The jobs table keeps, beside each job's document, columns the store fills from the
Job on every write, so that ended jobs need not be decoded (or held) to be counted,
expired or have their blobs kept: ``state``; ``ended_at`` (epoch seconds of
``finished_at`` when the state is terminal, else NULL; a terminal job without
``finished_at`` falls back to ``cancelled_at``, then ``created_at``); ``owner``
(``submitted_by``); ``spec_bytes`` (``scheduler.limits.spec_bytes`` of an ended job;
0 while it runs or waits, as only ended rows are read back by it); ``blobs``
(``blobs_column``); ``webhook_pending``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import Any

from common import codec
from common.errors import BerthError, NotLeader
from common.history_models import StatsSample, UsagePoint
from common.models import Job
from common.schedule_models import Schedule
from common.states import TERMINAL
from scheduler.events import Event
from scheduler.limits import spec_bytes
from scheduler.store.commit import CommitStats, GroupCommit
from scheduler.store.records import (
    BLOB_TAGS,
    AuditRecord,
    BlobHold,
    Changes,
    EndedRow,
    EndedRows,
    HistoryRow,
    Loaded,
    LogChunk,
    RawEvent,
    SealedSecret,
    UsageRow,
    blobs_column,
    parse_blobs,
)
from scheduler.tokens import TokenRow

__all__ = [
    "BLOB_TAGS",
    "AuditRecord",
    "BlobHold",
    "Changes",
    "EndedRow",
    "EndedRows",
    "HistoryRow",
    "Loaded",
    "LogChunk",
    "RawEvent",
    "SealedSecret",
    "Store",
    "TokenRow",
    "UsageRow",
    "blobs_column",
    "cutoff_seconds",
    "job_columns",
    "parse_blobs",
]

#: a job's row beside its document: (ended_at, owner, spec_bytes, blobs, webhook_pending)
JobColumns = tuple[float | None, str | None, int, str | None, int]


def job_columns(job: Job) -> JobColumns:
    """The jobs table's columns for ``job`` (see the module docstring)."""
    ended_at = None
    if job.state in TERMINAL:
        at = job.finished_at or job.cancelled_at or job.created_at
        ended_at = at.timestamp()
    return (
        ended_at,
        job.submitted_by,
        # Only ended rows are read back by it: a live job, written at every change,
        # is not encoded again for it.
        spec_bytes(job.spec) if ended_at is not None else 0,
        blobs_column(job),
        int(job.webhook_pending),
    )


def cutoff_seconds(cutoff: float | str) -> float:
    """A cutoff as epoch seconds; an RFC 3339 string is converted."""
    if isinstance(cutoff, str):
        return datetime.fromisoformat(cutoff.replace("Z", "+00:00")).timestamp()
    return float(cutoff)


class Store(ABC):
    """Durable state behind a group commit.

    Subclasses implement the backend part (``_open``, ``_close``, ``_encode``,
    ``_write``, ``_encode_job``, ``_read_docs``, ``_read_log_size`` and the reads);
    batching, waiters, retries while failing and read-your-writes live here and in
    ``GroupCommit``, the same for every backend.
    """

    def __init__(self) -> None:
        self._group: GroupCommit[Any] = GroupCommit(self._encode, self._write)
        self._closed = False

    @property
    def failure(self) -> str | None:
        """Why writes fail at the moment (what the last try said), None while they
        succeed."""
        return self._group.failure

    @failure.setter
    def failure(self, value: str | None) -> None:
        self._group.failure = value

    @property
    def commit_stats(self) -> CommitStats:
        """The batches written since the start: their time and size (for metrics)."""
        return self._group.stats

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> Loaded:
        """Create the schema if needed (bringing an older one up to date) and read
        everything back."""
        loaded = await self._open()
        self._group.start()
        return loaded

    async def close(self) -> None:
        """Write what is staged and release the database; once closed, nothing more."""
        if self._closed:
            return
        self._closed = True
        await self._group.close()
        await self._close()

    # --- writes ----------------------------------------------------------------------

    async def commit(self, changes: Changes) -> None:
        """Make ``changes`` durable; return once the batch holding them is committed.

        Raises Unavailable when that batch could not be written: its changes stay
        staged and are written, ahead of newer ones, by the next batch that succeeds
        (``failure`` says why meanwhile; the store retries on its own)."""
        await self._group.commit(changes)

    def stage(self, changes: Changes) -> asyncio.Future[None]:
        """Stage ``changes`` at once, so that reads see them from now on; the future is
        done (or failed, as ``commit`` raises) once they are durable."""
        return self._group.stage(changes)

    def discard(self, why: BerthError | None = None) -> None:
        """Drop what is not written yet and refuse commits until ``resume`` (see
        ``GroupCommit.discard``)."""
        self._group.discard(why or NotLeader("this scheduler no longer leads; nothing was done"))

    def resume(self) -> None:
        self._group.resume()

    def take_recovered(self) -> list[Changes]:
        """Change sets whose commit failed (their callers got Unavailable) and that
        have been written since, oldest first; each is returned once."""
        return self._group.take_recovered()

    @abstractmethod
    async def delete_jobs(self, job_ids: list[str]) -> None:
        """Delete jobs with their events, logs, usage samples and idempotency keys, in one
        transaction."""

    @abstractmethod
    async def prune_events(self, keep: int) -> int:
        """Drop events older than the newest ``keep`` unless their job is still kept.

        Returns the index below which events may now be missing."""

    async def shared_secret(self, name: str, make: Callable[[], str]) -> str | None:
        """A secret every scheduler on this store shares, made by the first one that asks
        (``make``), or None when the store keeps none: then it lives in the state
        directory."""
        return None

    # --- reads -----------------------------------------------------------------------

    async def read_jobs(self, ids: list[str]) -> dict[str, bytes]:
        """The encoded documents of those of ``ids`` that exist, in their newest
        version: one not committed yet (staged, in flight, or kept from a failed
        batch) is encoded from there, never read from an older row. Served without
        queueing behind writes."""
        newest = self._pending_jobs(ids)
        rest = [i for i in ids if i not in newest]
        found = await self._read_docs(rest) if rest else {}
        # A batch that was in flight before the read stayed in ``pending`` until it had
        # committed, so the read saw it or ``newest`` holds it; what was staged during
        # the read is newer still.
        found.update(self._pending_jobs(rest))
        found.update(newest)
        return found

    def _pending_jobs(self, ids: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        pending = self._group.pending()
        for job_id in ids:
            for changes in pending:
                job = changes.jobs.get(job_id)
                if job is not None:
                    out[job_id] = self._encode_job(job)
                    break
        return out

    async def read_log_end(self, job_id: str, attempt: int) -> int:
        """Bytes of one attempt's log stored, counting chunks not committed yet."""
        # Oldest first, so that the first chunk at an offset wins, as the write does.
        chunks: dict[int, int] = {}
        for changes in reversed(self._group.pending()):
            for c in changes.logs:
                if c.job_id == job_id and c.attempt == attempt:
                    chunks.setdefault(c.offset, len(c.data))
        stored = await self._read_log_size(job_id, attempt)
        # A chunk committed during the read is counted there already: chunks follow
        # each other, so only those from the stored end on add to it.
        return stored + sum(n for offset, n in chunks.items() if offset >= stored)

    @abstractmethod
    async def read_log(self, job_id: str, attempt: int, offset: int, limit: int) -> bytes:
        """Bytes of one attempt's log from ``offset``, at most ``limit``."""

    @abstractmethod
    async def read_events(self, after: int, limit: int, job_id: str | None = None) -> list[Event]:
        """Committed events with index > ``after``, oldest first, optionally of one job."""

    async def read_raw_events(
        self, after: int, limit: int, job_id: str | None = None
    ) -> list[RawEvent]:
        """``read_events`` as stored, not decoded: for replays, which send the documents
        on as they are. A store may serve it without queueing behind its writes."""
        events = await self.read_events(after, limit, job_id)
        return [(e.index, e.type, e.job_id, codec.encode(e)) for e in events]

    @abstractmethod
    async def read_audit(
        self,
        after: int,
        limit: int,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[tuple[int, AuditRecord]]:
        """Audit records with id > ``after``, oldest first, optionally filtered."""

    async def read_schedules(self) -> list[Schedule] | None:
        """The committed schedules, for the reads of a standby (which does not follow
        them); None from a store that no standby shares."""
        return None

    async def read_secrets(self) -> list[SealedSecret] | None:
        """The committed secrets, for the reads of a standby (which does not follow
        them); None from a store that no standby shares."""
        return None

    @abstractmethod
    async def read_history(self, tier: int, start: float, end: float) -> list[StatsSample]:
        """Committed history rows of ``tier`` with ``start <= t < end``, oldest first."""

    @abstractmethod
    async def history_end(self, tier: int) -> float | None:
        """The time of ``tier``'s newest committed row, None when it has none."""

    @abstractmethod
    async def read_usage(self, job_id: str, attempt: int) -> list[UsagePoint]:
        """Committed usage samples of one attempt, oldest first."""

    @abstractmethod
    async def ended_before(self, cutoff: float | str, limit: int) -> list[str]:
        """Ids of committed ended jobs whose ``ended_at`` is before ``cutoff`` (epoch
        seconds; an RFC 3339 string is accepted for now), oldest first."""

    # --- what a backend implements ---------------------------------------------------

    @abstractmethod
    async def _open(self) -> Loaded:
        """Create or migrate the schema and read the state back."""

    @abstractmethod
    async def _close(self) -> None:
        """Release the database (nothing is staged any more)."""

    @abstractmethod
    def _encode(self, changes: Changes) -> Any:
        """A batch as the backend's rows; runs on the event loop, between two awaits,
        so no record is seen half-changed."""

    @abstractmethod
    async def _write(self, rows: Any) -> None:
        """Write one batch's rows in ONE transaction, off the event loop; raise if it
        did not commit (nothing of it may then be left written)."""

    @abstractmethod
    def _encode_job(self, job: Job) -> bytes:
        """A job's document exactly as ``_encode`` stores it."""

    @abstractmethod
    async def _read_docs(self, ids: list[str]) -> dict[str, bytes]:
        """Committed documents of those of ``ids`` that exist (see ``read_jobs``)."""

    @abstractmethod
    async def _read_log_size(self, job_id: str, attempt: int) -> int:
        """Committed bytes of one attempt's log."""

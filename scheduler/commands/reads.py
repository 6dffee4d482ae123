"""Reads that streams and probes need, and blob transfers: what routes ask of the
state without touching it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from common.errors import Forbidden
from common.models import Job
from scheduler import blobholds
from scheduler.blobs import Stored
from scheduler.events import Event
from scheduler.service import Service
from scheduler.store.base import RawEvent
from scheduler.tokens import TokenRow

#: the one answer to a blob the caller may not read, whether or not it is stored
NOT_READABLE = "this token may not read that blob"


class Reads(Service):
    # --- the event index -------------------------------------------------------------

    @property
    def index(self) -> int:
        """The highest committed event index: the version of the whole state."""
        return self.state.events.committed_index

    @property
    def events_pruned_below(self) -> int:
        return self.state.events_pruned_below

    def recent_events(self, after: int) -> Iterator[Event] | None:
        """Committed events past ``after`` from memory, or None when memory does not
        reach back that far (read them from the store)."""
        return self.state.events.replay(after)

    async def wait_for_index(self, index: int, timeout: float) -> None:
        """Return once the committed index passes ``index``, or after ``timeout``."""
        await self.state.events.wait_past(index, timeout)

    async def read_history(self, after: int, limit: int, job_id: str | None) -> list[RawEvent]:
        """Committed events past ``after`` as stored, oldest first (for replays)."""
        return await self.store.read_raw_events(after, limit, job_id)

    def job_owner(self, job_id: str) -> str | None:
        return self.state.submitter_of(job_id)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    # --- logs ------------------------------------------------------------------------

    async def log_end(self, job_id: str, attempt: int) -> int:
        """Bytes of that attempt's log stored. Memory knows them for the attempts of
        live jobs; those of ended jobs, and of a retried job's earlier attempts, are let
        go of and read from the store."""
        end = self.state.log_ends.get((job_id, attempt))
        if end is not None:
            return end
        live = self.state.jobs.get(job_id)
        if live is not None and live.attempt == attempt:
            return 0
        if live is None and job_id not in self.state.archive:
            return 0
        return await self.store.read_log_end(job_id, attempt)

    async def read_log(self, job_id: str, attempt: int, offset: int, limit: int) -> bytes:
        if offset >= await self.log_end(job_id, attempt):
            return b""
        return await self.store.read_log(job_id, attempt, offset, limit)

    async def job_now(self, job_id: str) -> Job:
        """The job as it is now (the caller has seen it before)."""
        await self.fetch_ended([job_id])
        return self.state.job(job_id)

    # --- blobs -----------------------------------------------------------------------

    async def store_blob(
        self, who: TokenRow, body: AsyncIterator[bytes], declared: int | None
    ) -> Stored:
        """Store a blob, its declared size reserved on disk and counted against the
        token's quota before a byte of it is read; the uploader then holds the blob."""
        self.blobs.check_declared(declared)
        # A body without a length may be as long as the largest blob.
        bound = self.blobs.max_bytes if declared is None else declared
        with (
            self.state.blob_holds.admit_upload(who, bound, self.config.max_blob_bytes_per_token),
            self.guard.reserve(bound) as held,
        ):
            stored = await self.blobs.put(body, declared=declared, wrote=held.wrote)
        charged = stored.size if who.role in blobholds.QUOTA_ROLES else 0
        self.state.blob_holds.hold(stored.digest, who.name, charged, self.state.changes)
        return stored

    async def upload(
        self, who: TokenRow, body: AsyncIterator[bytes], declared: int | None
    ) -> Stored:
        stored = await self.store_blob(who, body, declared)
        await self.commit()
        return stored

    def check_blob_readable(self, who: TokenRow, digest: str) -> None:
        if not blobholds.may_read(self.state, who, digest):
            raise Forbidden(NOT_READABLE)

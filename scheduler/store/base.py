"""The store interface: what the scheduler persists and how it reads it back.

The scheduler's in-memory state is authoritative while it runs; the store makes every
acknowledged change survive a crash. Changes are grouped: many mutations are staged
and written in one transaction, and each caller awaits the commit of the batch that
holds its change before it answers its client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import codec
from common.models import Job, Node
from common.states import JobState
from scheduler.events import Event

#: one event as stored: its index, type, job id and encoded document
RawEvent = tuple[int, str, str | None, bytes]


@dataclass(slots=True, frozen=True)
class TokenRow:
    #: sha256 of the token; the token itself is never stored
    digest: str
    #: admin, submit or read for people; join and node for agents
    role: str
    name: str
    node_id: str | None = None
    #: a submit token that may see and act on every job, not only its own
    all_jobs: bool = False
    created_at: str | None = None
    created_by: str | None = None
    #: set when revoked: the row stays so the token's history reads whole
    revoked_at: str | None = None

    @property
    def id(self) -> str:
        """A public name for the token: a prefix of its digest, never the secret."""
        return self.digest[:12]


@dataclass(slots=True, frozen=True)
class AuditRecord:
    """Who did what to what, and when: written in the same commit as the change."""

    at: str
    actor: str
    role: str
    action: str
    target: str | None
    details: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class LogChunk:
    job_id: str
    attempt: int
    offset: int
    data: bytes


@dataclass(slots=True, frozen=True)
class BlobHold:
    """A name that may read a blob because it held the blob's content: it uploaded the
    blob, or owns a job whose outputs or checkpoint it is. Kept until the blob is
    swept; a hold never outlives its blob's deletion in the store."""

    digest: str
    #: a token's name (node tokens are named ``node:NAME``)
    name: str
    #: bytes the blob costs the name's quota: its size when the name uploaded it, 0
    #: when the name holds it only as a job's owner
    charged: int = 0


@dataclass(slots=True)
class Changes:
    """Everything one batch writes. Jobs and nodes are keyed by id: last write wins."""

    jobs: dict[str, Job] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    idempotency: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[TokenRow] = field(default_factory=list)
    revoked_tokens: list[str] = field(default_factory=list)
    logs: list[LogChunk] = field(default_factory=list)
    #: concurrency groups' limits
    groups: dict[str, int] = field(default_factory=dict)
    audit: list[AuditRecord] = field(default_factory=list)
    #: digest -> every hold on that blob now (none: the blob is gone); last write wins
    blob_holds: dict[str, tuple[BlobHold, ...]] = field(default_factory=dict)
    #: ids of nodes an admin forgot: their rows are deleted (after this batch's writes)
    forgotten_nodes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.audit
            or self.blob_holds
            or self.forgotten_nodes
            or self.groups
            or self.jobs
            or self.nodes
            or self.events
            or self.idempotency
            or self.tokens
            or self.revoked_tokens
            or self.logs
        )

    def merge(self, other: Changes) -> None:
        self.jobs.update(other.jobs)
        self.nodes.update(other.nodes)
        self.events.extend(other.events)
        self.idempotency.extend(other.idempotency)
        self.tokens.extend(other.tokens)
        self.revoked_tokens.extend(other.revoked_tokens)
        self.logs.extend(other.logs)
        self.groups.update(other.groups)
        self.audit.extend(other.audit)
        self.blob_holds.update(other.blob_holds)
        self.forgotten_nodes.extend(other.forgotten_nodes)


@dataclass(slots=True)
class Loaded:
    """The state read back at start."""

    jobs: list[Job]
    nodes: list[Node]
    idempotency: dict[str, str]
    tokens: list[TokenRow]
    last_index: int
    #: (job id, attempt) -> bytes of log stored
    log_ends: dict[tuple[str, int], int]
    #: ended jobs as (id, state, JSON document prefixed with the archive's state code)
    archived: list[tuple[str, JobState, bytes]] = field(default_factory=list)
    #: events below this index may have been dropped by retention
    events_pruned_below: int = 0
    #: concurrency groups' limits
    groups: dict[str, int] = field(default_factory=dict)
    #: ended jobs whose webhook has not been delivered yet
    webhooks_pending: list[str] = field(default_factory=list)
    #: who may read which blob (see BlobHold)
    blob_holds: list[BlobHold] = field(default_factory=list)


class Store(ABC):
    #: why writes fail at the moment (what the last try said), None while they succeed
    failure: str | None = None
    #: called once writes succeed again, after the changes of the failed batches (which
    #: a store keeps and writes ahead of newer ones) are durable, before their waiters
    on_recovered: Callable[[], None] | None = None

    @abstractmethod
    async def open(self) -> Loaded:
        """Create the schema if needed and read everything back."""

    @abstractmethod
    async def commit(self, changes: Changes) -> None:
        """Make ``changes`` durable; return once the batch holding them is committed."""

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
    async def prune_events(self, keep: int) -> int:
        """Drop events older than the newest ``keep`` unless their job is still kept.

        Returns the index below which events may now be missing."""

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

    @abstractmethod
    async def ended_before(self, cutoff: str, limit: int) -> list[str]:
        """Ids of ended jobs that finished before ``cutoff`` (RFC 3339), oldest first."""

    @abstractmethod
    async def delete_jobs(self, job_ids: list[str]) -> None:
        """Delete jobs with their events, logs and idempotency keys, in one transaction."""

    @abstractmethod
    async def close(self) -> None:
        """Write what is staged and release the database."""

"""The store's records: what one batch writes and what a start reads back."""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from common.history_models import StatsSample, UsagePoint
from common.models import Job, Node, Owner
from common.schedule_models import Schedule
from common.secret_models import SecretInfo
from common.states import JobState
from scheduler.events import Event
from scheduler.tokens import TokenRow

#: one event as stored: its index, type, job id and encoded document
RawEvent = tuple[int, str, str | None, bytes]

#: the most usage samples kept per attempt: past it every other one is dropped, so a long
#: attempt keeps between half that many and that many, spread over its whole run (at one
#: sample every 2 s, each sample of its first two hours)
USAGE_KEPT = 3600

#: an ended job as a start reads it, without its document:
#: (id, state, owner, spec_bytes, blobs, webhook_pending). ``owner`` is who submitted
#: it; ``spec_bytes`` the size of its encoded spec (``scheduler.limits.spec_bytes``);
#: ``blobs`` the digests it names (see ``blobs_column``), None when none;
#: ``webhook_pending`` whether its end still has to reach its webhook.
EndedRow = tuple[str, JobState, str | None, int, str | None, bool]


@dataclass(slots=True)
class EndedRows:
    """Every ended job as a start reads it (see EndedRow), kept column by column: a
    tuple per job would cost, while loading, about as much as the job's index entry."""

    ids: list[str] = field(default_factory=list)
    states: list[JobState] = field(default_factory=list)
    #: interned: a few submitters own most jobs
    owners: list[str | None] = field(default_factory=list)
    spec_bytes: array[int] = field(default_factory=lambda: array("q"))
    #: row -> the blobs it names, for the few rows that name any
    blobs: dict[int, str] = field(default_factory=dict)
    #: rows whose end still has to reach their webhook
    webhooks: set[int] = field(default_factory=set)

    def append(self, row: EndedRow) -> None:
        job_id, state, owner, size, blobs, webhook = row
        if blobs is not None:
            self.blobs[len(self.ids)] = blobs
        if webhook:
            self.webhooks.add(len(self.ids))
        self.ids.append(job_id)
        self.states.append(state)
        self.owners.append(owner)
        self.spec_bytes.append(size)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[EndedRow]:
        for i, job_id in enumerate(self.ids):
            yield (
                job_id,
                self.states[i],
                self.owners[i],
                self.spec_bytes[i],
                self.blobs.get(i),
                i in self.webhooks,
            )


#: how ``blobs_column`` tags each digest: the job's inputs, outputs and checkpoint
BLOB_TAGS = ("i", "o", "c")


def blobs_column(job: Job) -> str | None:
    """The blob digests a job names, as one string: ``"i:<digest> o:<digest> c:<digest>"``
    (space-separated ``tag:digest`` pairs, in that order: its inputs, outputs and
    checkpoint; a pair it lacks is left out), or None when it names none."""
    parts = []
    if job.spec.inputs is not None:
        parts.append("i:" + job.spec.inputs)
    if job.outputs is not None:
        parts.append("o:" + job.outputs)
    if job.checkpoint is not None:
        parts.append("c:" + job.checkpoint)
    return " ".join(parts) if parts else None


def parse_blobs(blobs: str | None) -> dict[str, str]:
    """``blobs_column`` read back: tag (``i``, ``o`` or ``c``) -> digest."""
    if not blobs:
        return {}
    out = {}
    for part in blobs.split(" "):
        tag, _, digest = part.partition(":")
        out[tag] = digest
    return out


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


@dataclass(slots=True, frozen=True)
class SealedSecret:
    """A stored secret: what is shown of it, and its value sealed under the key that
    ``key_id`` names (``scheduler.secretbox``). The value itself is never stored."""

    info: SecretInfo
    key_id: str
    sealed: bytes

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(slots=True, frozen=True)
class HistoryRow:
    """One stored point of the cluster's history: a sample (tier 0) or the average of
    a coarser tier's step (see ``scheduler.history``)."""

    tier: int
    sample: StatsSample


def history_doc(row: HistoryRow) -> bytes:
    """A history row's document as stored: its JSON, compressed (a sample repeats the
    same keys for every node)."""
    return zlib.compress(msgspec.json.encode(row.sample), 1)


@dataclass(slots=True, frozen=True)
class UsageRow:
    """One usage sample of a job's attempt, as its agent took it."""

    job_id: str
    attempt: int
    point: UsagePoint


@dataclass(slots=True)
class Changes:
    """Everything one batch writes, in one transaction. What each write means (the
    table in ``scheduler.store.base`` says it per table) is written next to each field:

    - upsert: the record is keyed; the last write of a key wins, in the batch and in
      the table;
    - insert-once: the first write of a key stays; a later one is ignored;
    - append: a new row every time;
    - delete: the keyed rows go (after this batch's other writes).
    """

    #: jobs table, upsert by job id
    jobs: dict[str, Job] = field(default_factory=dict)
    #: nodes table, upsert by node id
    nodes: dict[str, Node] = field(default_factory=dict)
    #: events table, insert-once by index (indexes only grow, so in effect an append;
    #: a retried batch whose rows did land is not refused over them)
    events: list[Event] = field(default_factory=list)
    #: idempotency table, (key, job id), insert-once by key
    idempotency: list[tuple[str, str]] = field(default_factory=list)
    #: tokens table, upsert by digest
    tokens: list[TokenRow] = field(default_factory=list)
    #: tokens table, delete by digest (after this batch's tokens)
    revoked_tokens: list[str] = field(default_factory=list)
    #: logs table, insert-once by (job id, attempt, offset)
    logs: list[LogChunk] = field(default_factory=list)
    #: groups table (concurrency groups' limits), upsert by name
    groups: dict[str, int] = field(default_factory=dict)
    #: audit table, append
    audit: list[AuditRecord] = field(default_factory=list)
    #: blob_holds table: digest -> every hold on that blob now (none: the blob is gone);
    #: the digest's rows are replaced as a whole (delete by digest, then insert), so
    #: the last write of a digest wins
    blob_holds: dict[str, tuple[BlobHold, ...]] = field(default_factory=dict)
    #: nodes table, delete by id (after this batch's nodes): nodes an admin forgot
    forgotten_nodes: list[str] = field(default_factory=list)
    #: schedules table (periodic jobs), upsert by name
    schedules: dict[str, Schedule] = field(default_factory=dict)
    #: schedules table, delete by name (after this batch's schedules)
    deleted_schedules: list[str] = field(default_factory=list)
    #: owners table (quotas and fair-share usage), upsert by name
    owners: dict[str, Owner] = field(default_factory=dict)
    #: secrets table, upsert by name
    secrets: dict[str, SealedSecret] = field(default_factory=dict)
    #: secrets table, delete by name (after this batch's secrets)
    deleted_secrets: list[str] = field(default_factory=list)
    #: history table, upsert by (tier, t)
    history: list[HistoryRow] = field(default_factory=list)
    #: history table, delete by tier the rows before the time given (after ``history``)
    history_cut: dict[int, float] = field(default_factory=dict)
    #: usage table, insert-once by (job id, attempt, t)
    usage: list[UsageRow] = field(default_factory=list)
    #: usage table: per (job id, attempt), every other sample is deleted when it has
    #: more than ``USAGE_KEPT`` (after ``usage``)
    usage_thin: list[tuple[str, int]] = field(default_factory=list)

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
            or self.schedules
            or self.deleted_schedules
            or self.owners
            or self.secrets
            or self.deleted_secrets
            or self.history
            or self.history_cut
            or self.usage
            or self.usage_thin
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
        for name in other.deleted_schedules:
            self.schedules.pop(name, None)
        if other.schedules:
            # Made again after an earlier delete: the delete no longer stands.
            self.deleted_schedules = [n for n in self.deleted_schedules if n not in other.schedules]
        self.schedules.update(other.schedules)
        self.deleted_schedules.extend(other.deleted_schedules)
        self.owners.update(other.owners)
        for name in other.deleted_secrets:
            self.secrets.pop(name, None)
        if other.secrets:
            # Set again after an earlier delete: the delete no longer stands.
            self.deleted_secrets = [n for n in self.deleted_secrets if n not in other.secrets]
        self.secrets.update(other.secrets)
        self.deleted_secrets.extend(other.deleted_secrets)
        self.history.extend(other.history)
        for tier, before in other.history_cut.items():
            self.history_cut[tier] = max(before, self.history_cut.get(tier, before))
        self.usage.extend(other.usage)
        self.usage_thin.extend(other.usage_thin)


@dataclass(slots=True)
class Loaded:
    """The state read back at start."""

    #: jobs that have not ended, decoded
    jobs: list[Job]
    nodes: list[Node]
    idempotency: dict[str, str]
    tokens: list[TokenRow]
    last_index: int
    #: (job id, attempt) -> bytes of log stored; of jobs that have not ended only, unless
    #: the store was asked to load ended jobs' documents
    log_ends: dict[tuple[str, int], int]
    #: ended jobs as (id, state, JSON document prefixed with the archive's state code);
    #: only when the store was asked to load ended jobs' documents
    archived: list[tuple[str, JobState, bytes]] = field(default_factory=list)
    #: events below this index may have been dropped by retention
    events_pruned_below: int = 0
    #: concurrency groups' limits
    groups: dict[str, int] = field(default_factory=dict)
    #: ended jobs whose webhook has not been delivered yet
    webhooks_pending: list[str] = field(default_factory=list)
    #: who may read which blob (see BlobHold)
    blob_holds: list[BlobHold] = field(default_factory=list)
    #: every ended job, in id order, read from the jobs table's columns (see EndedRow)
    ended: EndedRows = field(default_factory=EndedRows)
    #: periodic jobs
    schedules: list[Schedule] = field(default_factory=list)
    #: owners' quotas and fair-share usage
    owners: list[Owner] = field(default_factory=list)
    #: stored secrets, their values sealed
    secrets: list[SealedSecret] = field(default_factory=list)

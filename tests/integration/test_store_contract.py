"""What every store backend promises (``scheduler.store.base``), on SQLite and on a real
PostgreSQL: a committed batch reads back whole after reopening, each table's write
semantics, reads that see what is not committed yet, deletions, retention and the
stored bytes of documents."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common.models import Job, JobSpec, Node, Owner, Quota, Resources
from common.secret_models import SecretInfo
from common.states import JobState, NodeState
from scheduler.events import Event
from scheduler.limits import spec_bytes
from scheduler.store.base import AuditRecord, BlobHold, Changes, LogChunk, SealedSecret, Store
from scheduler.store.postgres import PostgresStore
from scheduler.store.sqlite import SQLiteStore
from scheduler.tokens import TokenRow
from tests.pg import PgCluster, pg_cluster, pg_dsn  # noqa: F401
from tests.support import wait_until

# The stores are this module's subject: it is not repeated per store.
pytestmark = pytest.mark.stores("sqlite")

T0 = datetime(2030, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC)
DIGEST = "d" * 64


def make_job(n: int, state: JobState = JobState.QUEUED, **fields: Any) -> Job:
    spec = JobSpec(image="busybox", name=f"job-{n}", command=["echo", str(n)])
    ended = state in (JobState.COMPLETED, JobState.FAILED, JobState.TIMED_OUT)
    return Job(
        id=f"{n:014x}",
        name=spec.name,
        state=state,
        spec=spec,
        created_at=T0,
        finished_at=T0 + timedelta(seconds=n) if ended else None,
        **fields,
    )


def make_node(n: int) -> Node:
    return Node(
        id=f"node-{n}",
        name=f"host-{n}",
        state=NodeState.IDLE,
        capacity=Resources(cpu=4.0, memory_mb=8192),
        registered_at=T0,
    )


def event(index: int, job_id: str | None = None, kind: str = "job.queued") -> Event:
    return Event(index, kind, T0 + timedelta(seconds=index), job_id=job_id, data={"n": index})


def jid(n: int) -> str:
    return f"{n:014x}"


@dataclass
class Backend:
    """How a test reaches one backend: a new store on the same database, and a way to
    hold the next write transaction in flight (another connection holds what the
    writer must lock first)."""

    name: str
    make: Callable[[], Store]
    hold_writes: Callable[[], AbstractAsyncContextManager[None]]


def _sqlite(path: Path) -> Backend:
    @asynccontextmanager
    async def hold() -> AsyncIterator[None]:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    return Backend("sqlite", lambda: SQLiteStore(path), hold)


def _postgres(cluster: PgCluster, dsn: str) -> Backend:
    db = dsn.split("/")[3].split("?")[0]

    @asynccontextmanager
    async def hold() -> AsyncIterator[None]:
        conn = await cluster.connect(db)
        tx = conn.transaction()
        await tx.start()
        # Every write transaction takes the leader row's lock first.
        await conn.execute("SELECT 1 FROM leader WHERE id = 1 FOR UPDATE")
        try:
            yield
        finally:
            await tx.rollback()
            await conn.close()

    return Backend("postgres", lambda: PostgresStore(dsn), hold)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite(tmp_path / "berth.db")
    return _postgres(request.getfixturevalue("pg_cluster"), request.getfixturevalue("pg_dsn"))


# Not named ``store``: the integration suite's fixture of that name says which store
# the schedulers it starts run on.
@pytest.fixture
async def subject(backend: Backend) -> AsyncIterator[Store]:
    s = backend.make()
    await s.open()
    yield s
    await s.close()


async def reopen(backend: Backend, subject: Store) -> tuple[Store, Any]:
    await subject.close()
    again = backend.make()
    return again, await again.open()


def token(n: int, **fields: Any) -> TokenRow:
    return TokenRow(f"{n:064x}", "submit", f"user{n}", created_at="2030-01-02T03:04:05Z", **fields)


# --- a committed batch reads back whole --------------------------------------------------


async def test_a_committed_batch_reads_back_whole_after_reopening(
    backend: Backend, subject: Store
) -> None:
    live = make_job(1, submitted_by="alice")
    done = make_job(2, JobState.COMPLETED, submitted_by="bob", webhook_pending=True)
    nodes = [make_node(1), make_node(2)]
    events = [event(1, live.id), event(2, done.id), event(3, None, "node.registered")]
    audit = AuditRecord("2030-01-02T03:04:05Z", "admin", "admin", "token.create", "user1", {"a": 1})
    await subject.commit(
        Changes(
            jobs={live.id: live, done.id: done},
            nodes={n.id: n for n in nodes},
            events=events,
            idempotency=[("key-1", live.id)],
            tokens=[token(1, all_jobs=True), token(2)],
            logs=[LogChunk(live.id, 1, 0, b"hello "), LogChunk(live.id, 1, 6, b"world")],
            groups={"gpu": 2},
            audit=[audit],
            blob_holds={DIGEST: (BlobHold(DIGEST, "alice", 10), BlobHold(DIGEST, "bob"))},
        )
    )
    await subject.commit(
        Changes(
            revoked_tokens=[token(2).digest],
            forgotten_nodes=["node-2"],
            logs=[LogChunk(done.id, 1, 0, b"ended")],
        )
    )

    subject, loaded = await reopen(backend, subject)
    try:
        assert loaded.jobs == [live]
        assert list(loaded.ended) == [
            (done.id, JobState.COMPLETED, "bob", spec_bytes(done.spec), None, True)
        ]
        assert [(i, st, doc) for i, st, doc in loaded.archived] == [
            (done.id, JobState.COMPLETED, b"c" + msgspec.json.encode(done))
        ]
        assert loaded.nodes == [nodes[0]]
        assert loaded.idempotency == {"key-1": live.id}
        assert loaded.tokens == [token(1, all_jobs=True)]
        assert loaded.last_index == 3
        assert loaded.log_ends == {(live.id, 1): 11, (done.id, 1): 5}
        assert loaded.groups == {"gpu": 2}
        assert loaded.webhooks_pending == [done.id]
        assert sorted(loaded.blob_holds, key=lambda h: h.name) == [
            BlobHold(DIGEST, "alice", 10),
            BlobHold(DIGEST, "bob", 0),
        ]
        assert await subject.read_events(0, 10) == events
        assert await subject.read_events(1, 10, job_id=done.id) == [events[1]]
        assert await subject.read_audit(0, 10) == [(1, audit)]
        assert await subject.read_log(live.id, 1, 3, 100) == b"lo world"
        assert await subject.read_log(live.id, 1, 0, 8) == b"hello wo"
        assert await subject.read_log_end(live.id, 1) == 11
    finally:
        await subject.close()


async def test_stored_documents_are_the_encoded_records_byte_for_byte(subject: Store) -> None:
    job = make_job(1, submitted_by="alice")
    events = [event(1, job.id), event(2)]
    await subject.commit(Changes(jobs={job.id: job}, events=events))
    assert await subject.read_jobs([job.id, "missing"]) == {job.id: msgspec.json.encode(job)}
    assert await subject.read_raw_events(0, 10) == [
        (e.index, e.type, e.job_id, msgspec.json.encode(e)) for e in events
    ]
    assert await subject.read_raw_events(0, 10, job_id=job.id) == [
        (1, "job.queued", job.id, msgspec.json.encode(events[0]))
    ]


async def test_loading_without_ended_documents_reads_their_columns_only(backend: Backend) -> None:
    subject = backend.make()
    await subject.open()
    ended = make_job(2, JobState.FAILED, submitted_by="carol")
    live = make_job(1)
    await subject.commit(
        Changes(
            jobs={ended.id: ended, live.id: live},
            logs=[LogChunk(live.id, 1, 0, b"live"), LogChunk(ended.id, 1, 0, b"ended")],
        )
    )
    await subject.close()
    subject = backend.make()
    subject.load_ended_docs = False  # type: ignore[attr-defined]
    loaded = await subject.open()
    try:
        assert loaded.jobs == [live]
        assert [(r[0], r[1], r[2]) for r in loaded.ended] == [(ended.id, JobState.FAILED, "carol")]
        assert loaded.archived == []
        assert loaded.log_ends == {(live.id, 1): 4}
    finally:
        await subject.close()


# --- each table's write ------------------------------------------------------------------


async def test_upserts_keep_the_last_write_and_inserts_once_the_first(
    backend: Backend, subject: Store
) -> None:
    job = make_job(1)
    await subject.commit(
        Changes(
            jobs={job.id: job},
            events=[event(1, job.id)],
            idempotency=[("key", job.id)],
            logs=[LogChunk(job.id, 1, 0, b"first")],
            tokens=[token(1)],
            groups={"g": 1},
            blob_holds={DIGEST: (BlobHold(DIGEST, "alice", 5),)},
        )
    )
    running = make_job(1, JobState.RUNNING)
    await subject.commit(
        Changes(
            jobs={job.id: running},
            # A retried batch's rows that did land are not refused over them.
            events=[event(1, job.id, "job.other")],
            idempotency=[("key", "someone-else")],
            logs=[LogChunk(job.id, 1, 0, b"again")],
            tokens=[token(1, revoked_at="2030-01-03T00:00:00Z"), token(3)],
            revoked_tokens=[token(3).digest],
            groups={"g": 4},
            blob_holds={DIGEST: (BlobHold(DIGEST, "bob"),), "e" * 64: ()},
        )
    )
    await subject.commit(Changes(audit=[AuditRecord("t", "a", "admin", "x", None)] * 2))
    subject, loaded = await reopen(backend, subject)
    try:
        assert loaded.jobs == [running]
        assert [e.type for e in await subject.read_events(0, 10)] == ["job.queued"]
        assert loaded.idempotency == {"key": job.id}
        assert await subject.read_log(job.id, 1, 0, 100) == b"first"
        assert loaded.tokens == [token(1, revoked_at="2030-01-03T00:00:00Z")]
        assert loaded.groups == {"g": 4}
        assert loaded.blob_holds == [BlobHold(DIGEST, "bob", 0)]
        assert [i for i, _ in await subject.read_audit(0, 10)] == [1, 2]
    finally:
        await subject.close()


# --- reads that see what is not committed yet --------------------------------------------


async def test_reads_see_a_batch_in_flight_and_what_is_staged_behind_it(
    backend: Backend, subject: Store
) -> None:
    job = make_job(1)
    await subject.commit(Changes(jobs={job.id: job}, logs=[LogChunk(job.id, 1, 0, b"12345")]))
    async with backend.hold_writes():
        done = make_job(1, JobState.COMPLETED)
        first = subject.stage(Changes(jobs={done.id: done}, logs=[LogChunk(job.id, 1, 5, b"67")]))
        await wait_until(lambda: len(subject._group.pending()) == 2, timeout=5, interval=0.005)
        assert await subject.read_jobs([job.id]) == {job.id: msgspec.json.encode(done)}
        assert await subject.read_log_end(job.id, 1) == 7
        cancelled = make_job(1, JobState.CANCELLED, cancelled_at=T0)
        second = subject.stage(
            Changes(jobs={job.id: cancelled}, logs=[LogChunk(job.id, 1, 7, b"8")])
        )
        assert await subject.read_jobs([job.id]) == {job.id: msgspec.json.encode(cancelled)}
        assert await subject.read_log_end(job.id, 1) == 8
        assert not first.done()
    await asyncio.gather(first, second)
    assert await subject.read_jobs([job.id]) == {job.id: msgspec.json.encode(cancelled)}
    assert await subject.read_log(job.id, 1, 0, 100) == b"12345678"


# --- deletions and retention -------------------------------------------------------------


async def test_delete_jobs_takes_their_events_logs_and_idempotency_keys(
    backend: Backend, subject: Store
) -> None:
    gone, kept = make_job(1, JobState.COMPLETED), make_job(2, JobState.COMPLETED)
    await subject.commit(
        Changes(
            jobs={gone.id: gone, kept.id: kept},
            events=[event(1, gone.id), event(2, kept.id)],
            idempotency=[("a", gone.id), ("b", kept.id)],
            logs=[LogChunk(gone.id, 1, 0, b"x"), LogChunk(kept.id, 1, 0, b"y")],
        )
    )
    await subject.delete_jobs([gone.id])
    assert await subject.read_jobs([gone.id, kept.id]) == {kept.id: msgspec.json.encode(kept)}
    subject, loaded = await reopen(backend, subject)
    try:
        assert [r[0] for r in loaded.ended] == [kept.id]
        assert loaded.idempotency == {"b": kept.id}
        assert loaded.log_ends == {(kept.id, 1): 1}
        assert [e.index for e in await subject.read_events(0, 10)] == [2]
        assert await subject.ended_before(T0.timestamp() + 100, 10) == [kept.id]
    finally:
        await subject.close()


async def test_prune_events_keeps_the_newest_and_every_event_of_a_kept_job(
    backend: Backend, subject: Store
) -> None:
    kept = make_job(1)
    events = [event(i, kept.id if i == 2 else None) for i in range(1, 11)]
    await subject.commit(Changes(jobs={kept.id: kept}, events=events))
    assert await subject.prune_events(3) == 8
    assert [e.index for e in await subject.read_events(0, 100)] == [2, 8, 9, 10]
    # Nothing more to drop: the mark stays where it is.
    assert await subject.prune_events(5) == 8
    subject, loaded = await reopen(backend, subject)
    try:
        assert loaded.events_pruned_below == 8
        assert loaded.last_index == 10
    finally:
        await subject.close()


async def test_ended_before_lists_ended_jobs_oldest_first(subject: Store) -> None:
    await subject.commit(
        Changes(
            jobs={
                j.id: j
                for j in (
                    make_job(30, JobState.COMPLETED),
                    make_job(10, JobState.FAILED),
                    make_job(20, JobState.TIMED_OUT),
                    make_job(5, JobState.CANCELLED, cancelled_at=T0 + timedelta(seconds=40)),
                    make_job(1),
                )
            }
        )
    )
    cutoff = (T0 + timedelta(seconds=25)).timestamp()
    assert await subject.ended_before(cutoff, 10) == [jid(10), jid(20)]
    assert await subject.ended_before(cutoff, 1) == [jid(10)]
    assert await subject.ended_before("2030-01-02T03:04:30.250000Z", 10) == [jid(10), jid(20)]
    assert await subject.ended_before(T0.timestamp() + 100, 10) == [
        jid(10),
        jid(20),
        jid(30),
        jid(5),
    ]


async def test_read_audit_filters_by_actor_action_and_target(subject: Store) -> None:
    records = [
        AuditRecord("t1", "alice", "admin", "token.create", "bob"),
        AuditRecord("t2", "alice", "admin", "node.drain", "node-1", {"reason": "x"}),
        AuditRecord("t3", "carol", "submit", "job.cancel", "bob"),
    ]
    await subject.commit(Changes(audit=records))
    assert [i for i, _ in await subject.read_audit(0, 10)] == [1, 2, 3]
    assert await subject.read_audit(1, 1) == [(2, records[1])]
    assert [i for i, _ in await subject.read_audit(0, 10, actor="alice")] == [1, 2]
    assert [i for i, _ in await subject.read_audit(0, 10, target="bob")] == [1, 3]
    assert [i for i, _ in await subject.read_audit(0, 10, actor="alice", target="bob")] == [1]
    assert await subject.read_audit(0, 10, action="node.drain") == [(2, records[1])]


async def test_secrets_upsert_and_delete_by_name_sealed_as_given(
    backend: Backend, subject: Store
) -> None:
    at = datetime(2030, 1, 2, tzinfo=UTC)

    def sealed(name: str, value: bytes, shared: bool = False) -> SealedSecret:
        return SealedSecret(
            SecretInfo(name=name, owner="alice", shared=shared, created_at=at, updated_at=at),
            "key-1",
            value,
        )

    await subject.commit(Changes(secrets={"a": sealed("a", b"\x01one"), "b": sealed("b", b"2")}))
    await subject.commit(Changes(secrets={"a": sealed("a", b"\x01\x00new", True)}))
    await subject.commit(Changes(deleted_secrets=["b"]))
    kept = [sealed("a", b"\x01\x00new", True)]
    assert await subject.read_secrets() in (None, kept)
    subject, loaded = await reopen(backend, subject)
    try:
        assert loaded.secrets == kept
    finally:
        await subject.close()


async def test_owners_upsert_by_name_and_read_back(backend: Backend, subject: Store) -> None:
    quota = Quota(max_running_cpu=16.0, max_running_jobs=100)
    await subject.commit(
        Changes(owners={"ci": Owner("ci", quota, 12.5, 1000.0), "dev": Owner("dev")})
    )
    await subject.commit(Changes(owners={"ci": Owner("ci", quota, 40.0, 1030.0)}))
    subject, loaded = await reopen(backend, subject)
    try:
        assert sorted(loaded.owners, key=lambda o: o.name) == [
            Owner("ci", quota, 40.0, 1030.0),
            Owner("dev"),
        ]
    finally:
        await subject.close()

"""The SQLite store on real files: group commit, failing writes, the jobs table's
columns and their migration, loading ended jobs, and reads that see what is not
committed yet."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common.errors import Unavailable
from common.models import Job, JobSpec
from common.states import JobState
from scheduler.limits import spec_bytes
from scheduler.store.base import Changes, LogChunk, job_columns, parse_blobs
from scheduler.store.sqlite import SQLiteStore
from tests.support import wait_until

# The stores are this module's subject: it is not repeated per store.
pytestmark = pytest.mark.stores("sqlite")

T0 = datetime(2030, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC)
DIGEST = {tag: c * 64 for tag, c in (("i", "a"), ("o", "b"), ("c", "c"))}


def make_job(
    n: int, state: JobState = JobState.QUEUED, spec: JobSpec | None = None, **fields: Any
) -> Job:
    spec = spec or JobSpec(image="busybox", name=f"job-{n}", command=["echo", str(n)])
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


def jobs(*items: Job) -> Changes:
    return Changes(jobs={j.id: j for j in items})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "berth.db")
    await s.open()
    yield s
    await set_max_pages(s, 0)
    await s.close()


async def on_writer(store: SQLiteStore, sql: str) -> list[Any]:
    """Run ``sql`` on the store's own connection, on its writer thread."""

    def run() -> list[Any]:
        assert store._conn is not None
        return store._conn.execute(sql).fetchall()

    return await asyncio.get_running_loop().run_in_executor(store._thread, run)


async def set_max_pages(store: SQLiteStore, pages: int) -> None:
    """Cap the database at ``pages`` pages (0: no cap): past it SQLite answers "database
    or disk is full", as on a full disk."""
    if store._conn is not None:
        await on_writer(store, f"PRAGMA max_page_count = {pages or 1_073_741_823}")


async def fill_the_disk(store: SQLiteStore) -> None:
    ((pages,),) = await on_writer(store, "PRAGMA page_count")
    await set_max_pages(store, pages)


def big_log(job_id: str, offset: int = 0) -> LogChunk:
    return LogChunk(job_id, 1, offset, b"x" * 65536)


def columns(path: Path, job_id: str) -> tuple[Any, ...]:
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT ended_at, owner, spec_bytes, blobs, webhook_pending FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


# --- group commit -----------------------------------------------------------------------


async def test_concurrent_commits_share_few_transactions(tmp_path: Path) -> None:
    class Counting(SQLiteStore):
        transactions = 0

        async def _write(self, rows: Any) -> None:
            self.transactions += 1
            await super()._write(rows)

    store = Counting(tmp_path / "berth.db")
    await store.open()
    await asyncio.gather(*(store.commit(jobs(make_job(i))) for i in range(200)))
    assert store.transactions <= 3
    await store.close()
    reopened = SQLiteStore(tmp_path / "berth.db")
    loaded = await reopened.open()
    assert len(loaded.jobs) == 200
    await reopened.close()


async def test_a_write_to_a_full_disk_raises_keeps_its_changes_and_writes_them_later(
    store: SQLiteStore, tmp_path: Path
) -> None:
    await fill_the_disk(store)
    first = Changes(jobs={"00000000000001": make_job(1)}, logs=[big_log("00000000000001")])
    with pytest.raises(Unavailable):
        await store.commit(first)
    assert store.failure is not None and "full" in store.failure
    second = jobs(make_job(1, JobState.CANCELLED, cancelled_at=T0), make_job(2))
    with pytest.raises(Unavailable):
        await store.commit(second)
    assert store.take_recovered() == []

    await set_max_pages(store, 0)
    # Nobody commits: the store writes what it kept on its own.
    await wait_until(lambda: store.failure is None, timeout=10)
    recovered = store.take_recovered()
    assert len(recovered) == 2 and recovered[0] is first and recovered[1] is second
    assert store.take_recovered() == []
    docs = await store.read_jobs(["00000000000001", "00000000000002"])
    assert msgspec.json.decode(docs["00000000000001"])["state"] == "cancelled"
    assert await store.read_log_end("00000000000001", 1) == 65536
    await store.close()
    loaded = await SQLiteStore(tmp_path / "berth.db").open()
    assert [j.id for j in loaded.jobs] == ["00000000000002"]
    assert [r[0] for r in loaded.ended] == ["00000000000001"]


async def test_a_batch_that_failed_is_handed_back_once_it_is_written(
    store: SQLiteStore,
) -> None:
    await fill_the_disk(store)
    failed = Changes(jobs={"00000000000001": make_job(1)}, logs=[big_log("a")])
    with pytest.raises(Unavailable):
        await store.commit(failed)
    await set_max_pages(store, 0)
    await store.commit(jobs(make_job(2)))
    assert store.take_recovered() == [failed]
    assert store.take_recovered() == []


async def test_close_writes_what_is_staged(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "berth.db")
    await store.open()
    commits = [asyncio.create_task(store.commit(jobs(make_job(i)))) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*commits)
    with pytest.raises(Unavailable):
        await store.commit(jobs(make_job(99)))
    loaded = await SQLiteStore(tmp_path / "berth.db").open()
    assert len(loaded.jobs) == 50


# --- the jobs table's columns ----------------------------------------------------------


async def test_every_job_write_fills_the_columns(store: SQLiteStore, tmp_path: Path) -> None:
    job = make_job(7, submitted_by="alice", webhook_pending=True)
    await store.commit(jobs(job))
    # A live job's spec size is counted once it ends (only ended rows are read by it).
    assert columns(tmp_path / "berth.db", job.id) == (None, "alice", 0, None, 1)
    spec = msgspec.structs.replace(job.spec, inputs=DIGEST["i"])
    ended = msgspec.structs.replace(
        job,
        spec=spec,
        state=JobState.COMPLETED,
        finished_at=T0,
        outputs=DIGEST["o"],
        checkpoint=DIGEST["c"],
        webhook_pending=False,
    )
    await store.commit(jobs(ended))
    at, owner, size, blobs, hook = columns(tmp_path / "berth.db", job.id)
    assert (at, owner, size, hook) == (T0.timestamp(), "alice", spec_bytes(spec), 0)
    assert blobs == f"i:{DIGEST['i']} o:{DIGEST['o']} c:{DIGEST['c']}"
    assert parse_blobs(blobs) == DIGEST


async def test_ended_before_takes_epoch_seconds_or_rfc3339(store: SQLiteStore) -> None:
    await store.commit(
        jobs(
            make_job(30, JobState.COMPLETED),
            make_job(10, JobState.FAILED),
            make_job(20, JobState.TIMED_OUT),
            make_job(1),
        )
    )
    cutoff = (T0 + timedelta(seconds=25)).timestamp()
    assert await store.ended_before(cutoff, 10) == [f"{10:014x}", f"{20:014x}"]
    assert await store.ended_before(cutoff, 1) == [f"{10:014x}"]
    assert await store.ended_before("2030-01-02T03:04:30.250000Z", 10) == [
        f"{10:014x}",
        f"{20:014x}",
    ]


def _old_database(path: Path, docs: list[Job]) -> None:
    """A database as the release before the jobs columns wrote it."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, doc BLOB NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO jobs VALUES (?, ?, ?)",
            [(j.id, j.state.value, msgspec.json.encode(j)) for j in docs],
        )
    conn.close()


async def test_an_old_database_gets_the_columns_filled_from_its_documents(
    tmp_path: Path,
) -> None:
    path = tmp_path / "berth.db"
    done = make_job(
        1,
        JobState.COMPLETED,
        submitted_by="bob",
        outputs=DIGEST["o"],
        webhook_pending=True,
        spec=JobSpec(image="busybox", inputs=DIGEST["i"]),
    )
    cancelled = make_job(2, JobState.CANCELLED, cancelled_at=T0 + timedelta(seconds=5))
    live = make_job(3, JobState.RUNNING, submitted_by="bob", checkpoint=DIGEST["c"])
    _old_database(path, [done, cancelled, live])

    for _ in range(2):  # the second open finds nothing to do
        store = SQLiteStore(path, load_ended_docs=False)
        loaded = await store.open()
        assert [j.id for j in loaded.jobs] == [live.id]
        assert loaded.archived == []
        assert loaded.webhooks_pending == [done.id]
        want = [
            (done.id, JobState.COMPLETED, "bob", None, f"i:{DIGEST['i']} o:{DIGEST['o']}", True),
            (cancelled.id, JobState.CANCELLED, None, None, None, False),
        ]
        assert [(r[0], r[1], r[2], None, r[4], r[5]) for r in loaded.ended] == want
        for row, job in zip(loaded.ended, (done, cancelled), strict=True):
            assert abs(row[3] - spec_bytes(job.spec)) <= spec_bytes(job.spec) // 10
        assert await store.ended_before(T0.timestamp() + 3, 10) == [done.id]
        assert await store.ended_before(T0.timestamp() + 6, 10) == [done.id, cancelled.id]
        await store.close()

    for job in (done, cancelled, live):
        at, owner, _, blobs, hook = columns(path, job.id)
        want_at, want_owner, _, want_blobs, want_hook = job_columns(job)
        assert owner == want_owner and blobs == want_blobs and hook == want_hook
        assert (at is None) == (want_at is None)
        if at is not None:
            assert want_at is not None and abs(at - want_at) < 0.01


# --- loading ---------------------------------------------------------------------------


async def test_ended_jobs_load_as_rows_in_id_order_and_docs_only_when_asked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "berth.db"
    store = SQLiteStore(path)
    await store.open()
    # Written out of id order, and an ended job written again (its row is replaced).
    await store.commit(jobs(make_job(5, JobState.FAILED, submitted_by="carol")))
    await store.commit(jobs(make_job(3, JobState.COMPLETED), make_job(4)))
    await store.commit(jobs(make_job(5, JobState.FAILED, submitted_by="carol")))
    await store.commit(
        Changes(logs=[LogChunk(f"{4:014x}", 1, 0, b"live"), LogChunk(f"{3:014x}", 1, 0, b"ended")])
    )
    await store.close()

    store = SQLiteStore(path, load_ended_docs=False)
    loaded = await store.open()
    assert [j.id for j in loaded.jobs] == [f"{4:014x}"]
    assert [(r[0], r[1], r[2]) for r in loaded.ended] == [
        (f"{3:014x}", JobState.COMPLETED, None),
        (f"{5:014x}", JobState.FAILED, "carol"),
    ]
    assert loaded.archived == []
    assert loaded.log_ends == {(f"{4:014x}", 1): 4}
    await store.close()

    store = SQLiteStore(path, load_ended_docs=True)
    loaded = await store.open()
    assert len(loaded.ended) == 2
    assert sorted((i, st, doc[:1]) for i, st, doc in loaded.archived) == [
        (f"{3:014x}", JobState.COMPLETED, b"c"),
        (f"{5:014x}", JobState.FAILED, b"f"),
    ]
    assert loaded.log_ends == {(f"{4:014x}", 1): 4, (f"{3:014x}", 1): 5}
    await store.close()


# --- reads that see what is not committed yet ------------------------------------------


async def test_read_jobs_returns_the_newest_version_while_its_batch_is_in_flight(
    store: SQLiteStore, tmp_path: Path
) -> None:
    job = make_job(1)
    await store.commit(jobs(job, make_job(2)))
    stored = msgspec.json.encode(job)
    assert await store.read_jobs([job.id, f"{2:014x}", "missing"]) == {
        job.id: stored,
        f"{2:014x}": msgspec.json.encode(make_job(2)),
    }

    # Another connection holds the write lock: the next batch waits in flight.
    blocker = sqlite3.connect(tmp_path / "berth.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    done = make_job(1, JobState.COMPLETED)
    commit = asyncio.create_task(store.commit(jobs(done)))
    await wait_until(lambda: len(store._group.pending()) == 2, timeout=5, interval=0.005)
    newest = msgspec.json.encode(done)
    assert (await store.read_jobs([job.id]))[job.id] == newest
    # A newer version staged behind the batch in flight wins over it.
    cancelled = make_job(1, JobState.CANCELLED, cancelled_at=T0)
    staged = asyncio.create_task(store.commit(jobs(cancelled)))
    await asyncio.sleep(0)
    assert (await store.read_jobs([job.id]))[job.id] == msgspec.json.encode(cancelled)
    blocker.execute("ROLLBACK")
    blocker.close()
    await asyncio.gather(commit, staged)
    assert (await store.read_jobs([job.id]))[job.id] == msgspec.json.encode(cancelled)


async def test_read_jobs_sees_a_failed_batch_kept_staged(store: SQLiteStore) -> None:
    await store.commit(jobs(make_job(1)))
    await fill_the_disk(store)
    done = make_job(1, JobState.COMPLETED)
    with pytest.raises(Unavailable):
        await store.commit(Changes(jobs={done.id: done}, logs=[big_log(done.id)]))
    assert (await store.read_jobs([done.id]))[done.id] == msgspec.json.encode(done)
    assert await store.read_log_end(done.id, 1) == 65536


async def test_read_jobs_reads_many_ids(store: SQLiteStore) -> None:
    await store.commit(jobs(*(make_job(i) for i in range(1200))))
    found = await store.read_jobs([f"{i:014x}" for i in range(0, 1300, 2)])
    assert len(found) == 600


async def test_read_log_end_counts_stored_and_staged_chunks_once(
    store: SQLiteStore, tmp_path: Path
) -> None:
    job_id = f"{1:014x}"
    assert await store.read_log_end(job_id, 1) == 0
    await store.commit(
        Changes(logs=[LogChunk(job_id, 1, 0, b"hello "), LogChunk(job_id, 2, 0, b"x")])
    )
    assert await store.read_log_end(job_id, 1) == 6
    blocker = sqlite3.connect(tmp_path / "berth.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    commit = asyncio.create_task(store.commit(Changes(logs=[LogChunk(job_id, 1, 6, b"world")])))
    await wait_until(lambda: len(store._group.pending()) == 2, timeout=5, interval=0.005)
    staged = asyncio.create_task(store.commit(Changes(logs=[LogChunk(job_id, 1, 11, b"!")])))
    await asyncio.sleep(0)
    assert await store.read_log_end(job_id, 1) == 12
    blocker.execute("ROLLBACK")
    blocker.close()
    await asyncio.gather(commit, staged)
    assert await store.read_log_end(job_id, 1) == 12
    assert await store.read_log(job_id, 1, 0, 100) == b"hello world!"
    assert await store.read_log_end(job_id, 2) == 1

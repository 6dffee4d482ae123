"""The history and usage tables of both stores: what a batch writes there, what reads
return, the cut of old rows, the thinning of an attempt's samples, deletion with the
job, and a database of the release before them brought up to date."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from common.history_models import Gauge, GpuGauge, StatsSample, UsagePoint
from common.models import Job, JobSpec
from common.states import JobState
from scheduler.store.base import Changes, HistoryRow, Store, UsageRow
from scheduler.store.postgres import PostgresStore
from scheduler.store.postgres_schema import SCHEMA_VERSION
from scheduler.store.records import USAGE_KEPT
from scheduler.store.sqlite import SQLiteStore
from tests.pg import pg_cluster, pg_dsn  # noqa: F401

# The stores are this module's subject: it is not repeated per store.
pytestmark = pytest.mark.stores("sqlite")

T0 = 1_900_000_000.0


@dataclass
class Backend:
    name: str
    make: Callable[[], Store]
    #: run SQL on the database as an older release left it
    sql: Callable[[str], object]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "berth.db"

        def run_sqlite(sql: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.executescript(sql)

        return Backend("sqlite", lambda: SQLiteStore(path), run_sqlite)
    dsn: str = request.getfixturevalue("pg_dsn")

    async def run_pg(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    return Backend("postgres", lambda: PostgresStore(dsn), run_pg)


@pytest.fixture
async def subject(backend: Backend) -> AsyncIterator[Store]:
    s = backend.make()
    await s.open()
    yield s
    await s.close()


def _sample(t: float, queued: int = 0) -> StatsSample:
    return StatsSample(
        t=t,
        queued=queued,
        running=0,
        jobs={"queued": queued},
        started=0,
        ended=0,
        cpu=Gauge(4.0, 1.0, 0.5),
        memory_mb=Gauge(),
        gpus=GpuGauge(),
    )


async def test_history_rows_read_back_by_tier_and_range_and_are_cut_by_age(
    subject: Store,
) -> None:
    rows = [HistoryRow(0, _sample(T0 + i, queued=i)) for i in range(5)]
    await subject.commit(Changes(history=[*rows, HistoryRow(1, _sample(T0, queued=9))]))
    got = await subject.read_history(0, T0 + 1, T0 + 4)
    assert [(s.t, s.queued) for s in got] == [(T0 + 1, 1), (T0 + 2, 2), (T0 + 3, 3)]
    assert got[0] == rows[1].sample
    assert [s.queued for s in await subject.read_history(1, 0, T0 + 10)] == [9]
    assert await subject.history_end(0) == T0 + 4
    assert await subject.history_end(2) is None
    # The last write of a (tier, t) wins; a cut drops the tier's older rows only.
    await subject.commit(
        Changes(history=[HistoryRow(0, _sample(T0 + 4, queued=40))], history_cut={0: T0 + 3})
    )
    got = await subject.read_history(0, 0, T0 + 10)
    assert [(s.t, s.queued) for s in got] == [(T0 + 3, 3), (T0 + 4, 40)]
    assert len(await subject.read_history(1, 0, T0 + 10)) == 1


def _job(job_id: str) -> Job:
    spec = JobSpec(image="busybox")
    return Job(
        id=job_id,
        name="",
        state=JobState.COMPLETED,
        spec=spec,
        created_at=datetime.fromtimestamp(T0, UTC),
    )


async def test_usage_samples_are_kept_per_attempt_thinned_when_too_many_and_go_with_the_job(
    subject: Store,
) -> None:
    jobs = {j: _job(j) for j in ("job-a", "job-b")}
    first = [UsageRow("job-a", 1, UsagePoint(T0 + 2 * i, float(i), 10.0 + i)) for i in range(3)]
    await subject.commit(Changes(jobs=jobs, usage=first))
    # A sample sent again (a retried report) is not stored twice.
    again = [UsageRow("job-a", 1, UsagePoint(T0, 99.0, 99.0))]
    await subject.commit(Changes(usage=[*again, UsageRow("job-a", 2, UsagePoint(T0, 1.0, 1.0))]))
    assert await subject.read_usage("job-a", 1) == [r.point for r in first]
    assert await subject.read_usage("job-a", 2) == [UsagePoint(T0, 1.0, 1.0)]
    assert await subject.read_usage("job-a", 3) == []

    many = [UsageRow("job-b", 1, UsagePoint(T0 + i, 1.0, 1.0)) for i in range(USAGE_KEPT)]
    # At the bound nothing is dropped ...
    await subject.commit(Changes(usage=many, usage_thin=[("job-b", 1)]))
    assert len(await subject.read_usage("job-b", 1)) == USAGE_KEPT
    # ... past it every other sample goes, spread over the whole attempt.
    extra = UsageRow("job-b", 1, UsagePoint(T0 + USAGE_KEPT, 1.0, 1.0))
    await subject.commit(Changes(usage=[extra], usage_thin=[("job-b", 1)]))
    kept = await subject.read_usage("job-b", 1)
    assert len(kept) == (USAGE_KEPT + 1) // 2 + 1
    assert [p.t for p in kept[:3]] == [T0, T0 + 2, T0 + 4]
    assert kept[-1].t == T0 + USAGE_KEPT

    await subject.delete_jobs(["job-a"])
    assert await subject.read_usage("job-a", 1) == []
    assert await subject.read_usage("job-a", 2) == []
    assert len(await subject.read_usage("job-b", 1)) == len(kept)


async def test_a_database_of_the_release_before_gets_the_history_and_usage_tables(
    backend: Backend,
) -> None:
    store = backend.make()
    await store.open()
    await store.close()
    drop = "DROP TABLE history; DROP TABLE usage;"
    if backend.name == "postgres":
        drop += f"UPDATE meta SET value = {SCHEMA_VERSION - 1} WHERE key = 'schema_version';"
    done = backend.sql(drop)
    if done is not None:
        await done  # type: ignore[misc]
    store = backend.make()
    await store.open()
    try:
        await store.commit(
            Changes(
                history=[HistoryRow(0, _sample(T0))],
                usage=[UsageRow("j", 1, UsagePoint(T0, 1.0, 2.0))],
            )
        )
        assert [s.t for s in await store.read_history(0, 0, T0 + 1)] == [T0]
        assert await store.read_usage("j", 1) == [UsagePoint(T0, 1.0, 2.0)]
    finally:
        await store.close()

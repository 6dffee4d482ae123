"""Blobs nothing refers to are swept: which blobs kept jobs name (counted as inputs,
outputs and checkpoints are recorded and dropped), which blobs the sweep picks, and the
sweep itself on every backend: real files, and a real PostgreSQL database
(``tests.pg``). What only files have (where a blob is moved aside, the names of
uploads) is tested on files alone."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import BerthError, InvalidRequest, NotFound, PayloadTooLarge, Unavailable
from common.models import Constraints, Job, Report
from scheduler.blobs import (
    ASIDE_SUFFIX,
    TMP_DIR,
    WRITE_BATCH,
    BlobFile,
    BlobStore,
    FileBlobs,
    unreferenced,
)
from scheduler.blobs_pg import ASIDE_PREFIX, PostgresBlobs
from scheduler.config import SchedulerConfig
from scheduler.state import State
from tests.pg import pg_cluster, pg_dsn  # noqa: F401
from tests.unit.test_cluster import FakeClock, loaded_from, new_cluster, register, report, submit

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
NOW = 1_800_000_000.0
GRACE = 3600.0


# --- the decision ---------------------------------------------------------------------


def test_only_old_blobs_no_job_names_are_picked() -> None:
    blobs = [
        BlobFile(A, 10, NOW - 2 * GRACE),  # old, named: stays
        BlobFile(B, 20, NOW - 2 * GRACE),  # old, named by nothing: goes
        BlobFile(C, 30, NOW - 1.0),  # young, named by nothing: stays (its job may come)
        BlobFile(D, 40, NOW - GRACE),  # stored exactly at the cutoff: stays
    ]
    assert unreferenced(blobs, {A}.__contains__, NOW - GRACE) == [blobs[1]]


def test_nothing_is_picked_when_every_blob_is_named_or_young() -> None:
    blobs = [BlobFile(A, 1, NOW - 10 * GRACE), BlobFile(B, 1, NOW)]
    assert unreferenced(blobs, {A}.__contains__, NOW - GRACE) == []


# --- what kept jobs name --------------------------------------------------------------


def _named(c: State) -> dict[str, int]:
    """Every reference of every kept job, recounted from the jobs themselves."""
    jobs: list[Job] = list(c.jobs.values())
    for job_id in c.archive:
        ended = c.archive.get(job_id)
        assert ended is not None
        jobs.append(ended)
    refs: Counter[str] = Counter()
    for job in jobs:
        for digest in (job.spec.inputs, job.outputs, job.checkpoint):
            if digest is not None:
                refs[digest] += 1
    return dict(refs)


def _counted(c: State) -> dict[str, int]:
    return dict(Counter(c.input_refs) + Counter(c.result_refs))


def _restarted(c: State, clock: FakeClock) -> State:
    c.take_changes()  # what was committed: ended jobs are archived
    loaded = loaded_from(c)
    loaded.archived = [(j, c.archive.state(j), c.archive.stored(j)) for j in c.archive]
    again = State(SchedulerConfig(restart_grace_s=0), clock=clock)
    again.load(loaded)
    return again


def test_outputs_and_checkpoints_are_named_until_their_job_is_forgotten(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c, inputs=A)
    c.place()
    report(c, job, "running")
    c.record_checkpoint(node.id, job.id, 1, B)
    report(c, job, None, checkpoint=C)  # a newer checkpoint replaces B
    assert not c.names_blob(B) and c.names_blob(C)
    report(c, job, "completed", exit_code=0, outputs=D)
    c.take_changes()
    assert all(c.names_blob(d) for d in (A, C, D))
    c.release_inputs(c.forget([job.id]))
    assert not any(c.names_blob(d) for d in (A, B, C, D))


def test_a_blob_shared_by_roles_stays_named_while_one_job_names_it(clock: FakeClock) -> None:
    # A pipeline: the outputs of one job are the input archive of the next.
    c = new_cluster(clock)
    register(c)
    first = submit(c)
    c.place()
    report(c, first, "running")
    report(c, first, "completed", exit_code=0, outputs=A)
    second = submit(c, inputs=A, constraints=Constraints(labels={"pool": "none"}))
    c.take_changes()
    c.release_inputs(c.forget([first.id]))
    assert c.names_blob(A)
    c.cancel(second.id, by="t")
    c.take_changes()
    c.release_inputs(c.forget([second.id]))
    assert not c.names_blob(A)


def test_a_retry_lets_go_of_the_outputs_and_keeps_the_checkpoint(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    job = submit(c)
    c.place()
    report(c, job, "running", checkpoint=A)
    report(c, job, "failed", exit_code=1, outputs=B)
    c.take_changes()
    c.retry(job.id, by="t")
    assert c.names_blob(A) and not c.names_blob(B)


def test_outputs_of_a_cancelled_attempt_that_arrive_late_are_named(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    job = submit(c)
    c.place()
    report(c, job, "running")
    c.cancel(job.id, by="t")
    c.take_changes()  # archived while its container still stops
    c.report(node.id, job.id, Report(attempt=1, state="cancelled", outputs=A))
    c.take_changes()
    assert c.names_blob(A)
    assert _counted(c) == _named(c)


def test_names_are_counted_again_after_a_restart(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c)
    done = submit(c, env={"outputs": "not-a-digest", "checkpoint": D})
    live = submit(c, inputs=C)
    c.place()
    report(c, done, "running", checkpoint=A)
    report(c, done, "completed", exit_code=0, outputs=B)
    report(c, live, "running")
    c.record_checkpoint(node.id, live.id, 1, A)
    again = _restarted(c, clock)
    assert _counted(again) == _named(again) == {A: 2, B: 1, C: 1}
    assert not again.names_blob(D)  # only in an environment variable


_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "submit",
                "place",
                "running",
                "outputs",
                "checkpoint",
                "complete",
                "fail",
                "cancel",
                "late",
                "retry",
                "commit",
                "forget",
                "restart",
            ]
        ),
        st.integers(0, 5),
        st.sampled_from([A, B, C, D, None]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_what_is_counted_is_what_kept_jobs_name_after_any_history(
    ops: list[tuple[str, int, str | None]],
) -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    node = register(c, cpu=64, memory_mb=65536, max_parallel=64)
    ids: list[str] = []
    for op, i, digest in ops:
        job_id = ids[i % len(ids)] if ids else ""
        job = c.jobs.get(job_id)
        attempt = job.attempt if job is not None else 1
        try:
            if op == "submit":
                ids.append(submit(c, inputs=digest, max_retries=1).id)
            elif op == "place":
                c.place()
            elif op == "restart":
                c = _restarted(c, clock)
            elif op == "commit":
                c.take_changes()
            elif op == "forget":
                c.take_changes()
                c.release_inputs(c.forget([job_id]))
            elif op == "retry":
                c.retry(job_id, by="t")
            elif op == "cancel":
                c.cancel(job_id, by="t")
            elif op == "checkpoint" and digest is not None:
                c.record_checkpoint(node.id, job_id, attempt, digest)
            elif op == "late":
                # The end of an attempt the scheduler let go of (held), with outputs.
                c.report(node.id, job_id, Report(attempt=1, state="cancelled", outputs=digest))
            else:
                state = {"running": "running", "outputs": None, "complete": "completed"}
                c.report(
                    node.id,
                    job_id,
                    Report(
                        attempt=attempt,
                        state=state.get(op, "failed"),  # type: ignore[arg-type]
                        exit_code=None if op in ("running", "outputs") else 0,
                        outputs=digest,
                    ),
                )
        except BerthError:
            pass  # refused, as an agent or client could be: nothing changed
        assert _counted(c) == _named(c), op
    c.take_changes()
    assert _counted(c) == _named(c)
    assert all(c.names_blob(d) == (d in _named(c)) for d in (A, B, C, D))


# --- the sweep on every backend -------------------------------------------------------


class Kept(ABC):
    """A blob store under test, and what a test sees and changes below it."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    @abstractmethod
    async def age(self, digest: str, seconds: float) -> None:
        """Make the blob look stored ``seconds`` before NOW."""

    @abstractmethod
    def stored_again_now(self, digest: str) -> None:
        """As if the same content were stored at NOW; blocking, so that ``named`` may
        call it in the middle of a sweep."""

    @abstractmethod
    async def stored_at(self, digest: str) -> float: ...

    @abstractmethod
    async def leftovers(self) -> list[str]:
        """What is aside or half uploaded: nothing once a sweep finished."""

    @abstractmethod
    async def left_aside(self, digest: str) -> None:
        """Move the blob aside as a sweep that did not finish would leave it."""


class KeptFiles(Kept):
    store: FileBlobs

    async def age(self, digest: str, seconds: float) -> None:
        at = NOW - seconds
        os.utime(self.store.path(digest), (at, at))

    def stored_again_now(self, digest: str) -> None:
        os.utime(self.store.path(digest), (NOW, NOW))

    async def stored_at(self, digest: str) -> float:
        return self.store.path(digest).stat().st_mtime

    async def leftovers(self) -> list[str]:
        tmp = self.store.root / TMP_DIR
        return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []

    async def left_aside(self, digest: str) -> None:
        self.store.path(digest).rename(self.store.root / TMP_DIR / (digest + ASIDE_SUFFIX))


class KeptRows(Kept):
    store: PostgresBlobs

    async def _run(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.store.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def age(self, digest: str, seconds: float) -> None:
        await self._run("UPDATE blobs SET stored_at = $2 WHERE digest = $1", digest, NOW - seconds)

    def stored_again_now(self, digest: str) -> None:
        sql = "UPDATE blobs SET stored_at = $2 WHERE digest = $1"
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._run(sql, digest, NOW)).result()

    async def stored_at(self, digest: str) -> float:
        rows = await self._run("SELECT stored_at FROM blobs WHERE digest = $1", digest)
        return float(rows[0]["stored_at"])

    async def leftovers(self) -> list[str]:
        rows = await self._run(
            """SELECT id AS name FROM blob_uploads UNION ALL SELECT digest FROM blob_aside
               UNION ALL SELECT DISTINCT digest FROM blob_chunks
                         WHERE digest NOT IN (SELECT digest FROM blobs)"""
        )
        return sorted(r["name"] for r in rows)

    async def left_aside(self, digest: str) -> None:
        await self._run(
            """WITH moved AS (DELETE FROM blobs WHERE digest = $1 RETURNING *),
                    aside AS (INSERT INTO blob_aside SELECT * FROM moved)
               UPDATE blob_chunks SET digest = $2 || digest WHERE digest = $1""",
            digest,
            ASIDE_PREFIX,
        )


@pytest.fixture(params=["files", "postgres"])
async def kept(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kept]:
    k: Kept
    if request.param == "files":
        k = KeptFiles(FileBlobs(tmp_path / "blobs"))
    else:
        k = KeptRows(PostgresBlobs(request.getfixturevalue("pg_dsn")))
    # Its tables are made on first use: a test may look below before that.
    assert not await k.store.exists(A)
    yield k
    await k.store.close()


async def _stored(kept: Kept, data: bytes, age: float) -> str:
    digest = (await kept.store.put_bytes(data)).digest
    await kept.age(digest, age)
    return digest


async def _content(store: BlobStore, digest: str) -> bytes:
    return b"".join([piece async for piece in store.read(digest)])


async def _pieces(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_the_sweep_deletes_old_blobs_no_job_names_and_nothing_else(kept: Kept) -> None:
    store = kept.store
    named = await _stored(kept, b"named input", 2 * GRACE)
    orphan = await _stored(kept, b"an upload no job names" * 100, 2 * GRACE)
    young = await _stored(kept, b"an input whose job is on its way", 10.0)
    swept = await store.sweep({named}.__contains__, grace_s=GRACE, now=NOW)
    assert (swept.blobs, swept.uploads, swept.freed_bytes) == (1, 0, 2200)
    assert swept.deleted == (orphan,)
    assert await store.exists_many([named, orphan, young]) == {named, young}
    assert await kept.leftovers() == []
    # Nothing left to do: a second sweep deletes nothing.
    assert (await store.sweep({named}.__contains__, grace_s=GRACE, now=NOW)).blobs == 0


async def test_a_blob_named_while_the_sweep_runs_is_put_back(kept: Kept) -> None:
    store = kept.store
    digest = await _stored(kept, b"about to be named", 2 * GRACE)
    asked: list[str] = []

    def named(d: str) -> bool:
        # Nothing names it when the sweep looks, then a job is submitted naming it
        # while the blob is being moved aside.
        asked.append(d)
        return len(asked) > 2

    swept = await store.sweep(named, grace_s=GRACE, now=NOW)
    assert (swept.blobs, swept.kept_back) == (0, 1)
    assert await store.exists(digest)
    assert await _content(store, digest) == b"about to be named"
    assert await kept.leftovers() == []


async def test_a_blob_stored_again_while_the_sweep_runs_is_put_back(kept: Kept) -> None:
    store = kept.store
    digest = await _stored(kept, b"outputs stored again", 2 * GRACE)
    asked: list[str] = []

    def named(d: str) -> bool:
        # An agent stores the same content again after the sweep chose the blob and
        # before it is moved aside; the report naming it comes after the sweep.
        asked.append(d)
        if len(asked) == 2:
            kept.stored_again_now(d)
        return False

    swept = await store.sweep(named, grace_s=GRACE, now=NOW)
    assert (swept.blobs, swept.kept_back) == (0, 1)
    assert await store.exists(digest)
    assert await _content(store, digest) == b"outputs stored again"


async def test_storing_a_blob_again_refreshes_its_time(kept: Kept) -> None:
    # The real clock: storing sets the blob's time to now.
    store = kept.store
    digest = (await store.put_bytes(b"same content")).digest
    long_ago = time.time() - 2 * GRACE
    await kept.age(digest, NOW - long_ago)
    again = await store.put_bytes(b"same content")
    assert not again.created
    assert await kept.stored_at(digest) > long_ago + GRACE
    assert (await store.sweep(lambda d: False, grace_s=GRACE)).blobs == 0
    assert await store.exists(digest)


async def test_what_an_unfinished_sweep_left_aside_is_put_back(kept: Kept) -> None:
    store = kept.store
    digest = await _stored(kept, b"moved aside before a crash", 2 * GRACE)
    await kept.left_aside(digest)
    assert not await store.exists(digest)
    swept = await store.sweep({digest}.__contains__, grace_s=GRACE, now=NOW)
    assert swept.blobs == 0
    assert await store.exists(digest) and await kept.leftovers() == []
    assert await _content(store, digest) == b"moved aside before a crash"


async def test_an_upload_left_unwritten_for_the_grace_is_swept_and_never_placed(
    kept: Kept,
) -> None:
    store = kept.store
    written = asyncio.Event()
    go_on = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * WRITE_BATCH
        await go_on.wait()
        yield b"the rest"

    upload = asyncio.create_task(store.put(stalls(), wrote=lambda n: written.set()))
    await written.wait()
    # Written to just now: under way, whatever its size.
    under_way = await store.sweep(lambda d: False, grace_s=GRACE)
    assert under_way.uploads == 0 and await kept.leftovers() != []
    abandoned = await store.sweep(lambda d: False, grace_s=GRACE, now=time.time() + 2 * GRACE)
    assert (abandoned.uploads, abandoned.freed_bytes) == (1, WRITE_BATCH)
    go_on.set()
    # Its writer came back too late: refused, and nothing of it is visible.
    with pytest.raises((FileNotFoundError, Unavailable)):
        await upload
    assert await kept.leftovers() == []
    assert (await store.sweep(lambda d: False, grace_s=0.0)).blobs == 0


async def test_a_blob_stored_is_read_back_whole_and_deleted(kept: Kept) -> None:
    store = kept.store
    data = os.urandom(2 * WRITE_BATCH + 12345)
    stored = await store.put(_pieces(data[:1000], data[1000:]), declared=len(data))
    assert stored.created and stored.size == len(data)
    assert await _content(store, stored.digest) == data
    assert await store.delete(stored.digest)
    assert not await store.delete(stored.digest)
    with pytest.raises(NotFound):
        await _content(store, stored.digest)


async def test_an_empty_blob_is_stored_and_read_back_empty(kept: Kept) -> None:
    stored = await kept.store.put(_pieces(), declared=0)
    assert (stored.digest, stored.size) == (hashlib.sha256(b"").hexdigest(), 0)
    assert await kept.store.exists(stored.digest)
    assert await _content(kept.store, stored.digest) == b""


@pytest.mark.parametrize(
    ("pieces", "declared", "expect", "refused"),
    [
        ((b"x" * 600, b"y" * 600), None, None, PayloadTooLarge),
        ((b"x" * 600,), 2000, None, PayloadTooLarge),
        ((b"x" * 600, b"y"), 600, None, InvalidRequest),
        ((b"some content",), None, "0" * 64, InvalidRequest),
    ],
    ids=["over the limit", "declared over the limit", "longer than declared", "not as said"],
)
async def test_a_refused_upload_leaves_nothing(
    kept: Kept,
    pieces: tuple[bytes, ...],
    declared: int | None,
    expect: str | None,
    refused: type[Exception],
) -> None:
    kept.store.max_bytes = 1000
    with pytest.raises(refused):
        await kept.store.put(_pieces(*pieces), declared=declared, expect=expect)
    assert await kept.leftovers() == []
    assert (await kept.store.sweep(lambda d: False, grace_s=0.0)).blobs == 0


async def test_content_as_its_sender_said_is_stored(kept: Kept) -> None:
    expect = hashlib.sha256(b"said").hexdigest()
    assert (await kept.store.put(_pieces(b"said"), expect=expect)).digest == expect


# --- files only -------------------------------------------------------------------


async def test_abandoned_uploads_are_deleted_and_uploads_under_way_are_not(
    tmp_path: Path,
) -> None:
    store = FileBlobs(tmp_path / "blobs")
    tmp = tmp_path / "blobs" / TMP_DIR
    tmp.mkdir(parents=True)
    abandoned = tmp / "0123456789abcdef.part"
    abandoned.write_bytes(b"x" * 500)
    os.utime(abandoned, (NOW - 2 * GRACE, NOW - 2 * GRACE))
    under_way = tmp / "fedcba9876543210.part"
    under_way.write_bytes(b"y" * 7)
    os.utime(under_way, (NOW - 5, NOW - 5))
    swept = await store.sweep(lambda d: False, grace_s=GRACE, now=NOW)
    assert (swept.blobs, swept.uploads, swept.freed_bytes) == (0, 1, 500)
    assert not abandoned.exists() and under_way.exists()


async def test_an_empty_or_missing_blob_directory_sweeps_to_nothing(tmp_path: Path) -> None:
    store = FileBlobs(tmp_path / "never-created")
    assert (await store.sweep(lambda d: False, grace_s=GRACE, now=NOW)).blobs == 0
    assert not (tmp_path / "never-created").exists()

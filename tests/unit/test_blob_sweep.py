"""Blobs nothing refers to are swept: which blobs kept jobs name (counted as inputs,
outputs and checkpoints are recorded and dropped), which blobs the sweep picks, and the
sweep itself on real files."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import BerthError
from common.models import Constraints, Job, Report
from scheduler.blobs import ASIDE_SUFFIX, TMP_DIR, BlobFile, BlobStore, unreferenced
from scheduler.config import SchedulerConfig
from scheduler.state import State
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


# --- the sweep on real files ----------------------------------------------------------


def _age(store: BlobStore, digest: str, seconds: float) -> None:
    """Make the blob look stored ``seconds`` before NOW."""
    at = NOW - seconds
    os.utime(store.path(digest), (at, at))


async def _stored(store: BlobStore, data: bytes, age: float) -> str:
    digest = (await store.put_bytes(data)).digest
    _age(store, digest, age)
    return digest


async def test_the_sweep_deletes_old_blobs_no_job_names_and_nothing_else(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    named = await _stored(store, b"named input", 2 * GRACE)
    orphan = await _stored(store, b"an upload no job names" * 100, 2 * GRACE)
    young = await _stored(store, b"an input whose job is on its way", 10.0)
    swept = await store.sweep({named}.__contains__, grace_s=GRACE, now=NOW)
    assert (swept.blobs, swept.uploads, swept.freed_bytes) == (1, 0, 2200)
    assert not store.exists(orphan)
    assert store.exists(named) and store.exists(young)
    assert sorted(p.name for p in (tmp_path / "blobs" / TMP_DIR).iterdir()) == []
    # Nothing left to do: a second sweep deletes nothing.
    assert (await store.sweep({named}.__contains__, grace_s=GRACE, now=NOW)).blobs == 0


async def test_a_blob_named_while_the_sweep_runs_is_put_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = await _stored(store, b"about to be named", 2 * GRACE)
    asked: list[str] = []

    def named(d: str) -> bool:
        # Nothing names it when the sweep looks, then a job is submitted naming it
        # while the blob is being moved aside.
        asked.append(d)
        return len(asked) > 2

    swept = await store.sweep(named, grace_s=GRACE, now=NOW)
    assert (swept.blobs, swept.kept_back) == (0, 1)
    assert store.exists(digest)
    assert store.find(digest).read_bytes() == b"about to be named"


async def test_a_blob_stored_again_while_the_sweep_runs_is_put_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = await _stored(store, b"outputs stored again", 2 * GRACE)
    asked: list[str] = []

    def named(d: str) -> bool:
        # An agent stores the same content again after the sweep chose the blob and
        # before it is moved aside; the report naming it comes after the sweep.
        asked.append(d)
        if len(asked) == 2:
            os.utime(store.path(d), (NOW, NOW))
        return False

    swept = await store.sweep(named, grace_s=GRACE, now=NOW)
    assert (swept.blobs, swept.kept_back) == (0, 1)
    assert store.exists(digest)


async def test_storing_a_blob_again_refreshes_its_time(tmp_path: Path) -> None:
    # The real clock: storing sets the file's time to now.
    store = BlobStore(tmp_path / "blobs")
    digest = (await store.put_bytes(b"same content")).digest
    long_ago = time.time() - 2 * GRACE
    os.utime(store.path(digest), (long_ago, long_ago))
    again = await store.put_bytes(b"same content")
    assert not again.created
    assert store.path(digest).stat().st_mtime > long_ago + GRACE
    assert (await store.sweep(lambda d: False, grace_s=GRACE)).blobs == 0
    assert store.exists(digest)


async def test_what_an_unfinished_sweep_left_aside_is_put_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = await _stored(store, b"moved aside before a crash", 2 * GRACE)
    aside = tmp_path / "blobs" / TMP_DIR / (digest + ASIDE_SUFFIX)
    store.path(digest).rename(aside)
    assert not store.exists(digest)
    swept = await store.sweep({digest}.__contains__, grace_s=GRACE, now=NOW)
    assert swept.blobs == 0
    assert store.exists(digest) and not aside.exists()


async def test_abandoned_uploads_are_deleted_and_uploads_under_way_are_not(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path / "blobs")
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
    store = BlobStore(tmp_path / "never-created")
    assert (await store.sweep(lambda d: False, grace_s=GRACE, now=NOW)).blobs == 0
    assert not (tmp_path / "never-created").exists()

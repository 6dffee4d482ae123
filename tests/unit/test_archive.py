"""Ended jobs are kept encoded and come back unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from common.models import Job, JobSpec
from common.states import JobState
from scheduler.archive import CODES, JobArchive, NotFetched


def _job(job_id: str, state: JobState) -> Job:
    return Job(
        id=job_id,
        name="n",
        state=state,
        spec=JobSpec(image="busybox", command=["true"], env={"A": "1"}),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        exit_code=0,
    )


def test_an_archived_job_reads_back_equal_with_its_state() -> None:
    archive = JobArchive()
    job = _job("a", JobState.COMPLETED)
    archive.put(job)
    assert "a" in archive and len(archive) == 1
    assert archive.state("a") is JobState.COMPLETED
    assert archive.get("a") == job


def test_each_ended_state_has_its_own_code() -> None:
    archive = JobArchive()
    for i, state in enumerate(CODES):
        archive.put(_job(str(i), state))
    assert [archive.state(str(i)) for i in range(len(CODES))] == list(CODES)
    assert len(set(CODES.values())) == len(CODES)


def test_a_decoded_copy_does_not_change_the_archive() -> None:
    archive = JobArchive()
    archive.put(_job("a", JobState.FAILED))
    copy = archive.get("a")
    assert copy is not None
    copy.exit_code = 99
    again = archive.get("a")
    assert again is not None and again.exit_code == 0


def test_pop_revives_the_job_and_forgets_it() -> None:
    archive = JobArchive()
    archive.put(_job("a", JobState.CANCELLED))
    revived = archive.pop("a")
    assert revived is not None and revived.state is JobState.CANCELLED
    assert "a" not in archive and archive.get("a") is None


def test_the_owner_is_read_without_the_rest_of_the_job() -> None:
    archive = JobArchive()
    owned = _job("a", JobState.FAILED)
    owned.submitted_by = "alice"
    archive.put(owned)
    archive.put(_job("b", JobState.COMPLETED))
    assert archive.owner("a") == "alice"
    assert archive.owner("b") is None


def test_only_the_most_recently_used_documents_stay_in_memory() -> None:
    archive = JobArchive(cache_size=2)
    for job_id in "abc":
        archive.put(_job(job_id, JobState.COMPLETED))
    # Every job is still indexed; the oldest document left memory.
    assert list(archive) == ["a", "b", "c"]
    assert archive.missing(["a", "b", "c"]) == ["a"]
    with pytest.raises(NotFetched):
        archive.get("a")
    assert archive.state("a") is JobState.COMPLETED


def test_asking_which_are_missing_keeps_the_others_in_memory() -> None:
    archive = JobArchive(cache_size=2)
    docs = {}
    for job_id in "abc":
        job = _job(job_id, JobState.FAILED)
        docs[job_id] = msgspec.json.encode(job)
        archive.put(job)
    # "b" is used again, so taking "a" back in pushes "c" out, not "b".
    assert archive.missing(["a", "b"]) == ["a"]
    archive.take({"a": docs["a"]})
    assert archive.missing(["a", "b"]) == []
    assert archive.get("a") == _job("a", JobState.FAILED)


def test_an_indexed_job_knows_its_owner_and_spec_size_without_its_document() -> None:
    archive = JobArchive(cache_size=1)
    archive.put_row("a", JobState.TIMED_OUT, "alice", 321)
    archive.put_row("b", JobState.CANCELLED, None, 5)
    assert archive.owner_and_spec_bytes("a") == ("alice", 321)
    assert archive.state("b") is JobState.CANCELLED and archive.owner("b") is None
    assert archive.missing(["a", "b", "zz"]) == ["a", "b"]


def test_a_document_read_back_after_the_job_was_revived_is_not_taken() -> None:
    archive = JobArchive(cache_size=4)
    job = _job("a", JobState.FAILED)
    archive.put_row("a", JobState.FAILED, None, 10)
    archive.drop("a")
    archive.take({"a": msgspec.json.encode(job)})
    assert "a" not in archive and archive.missing(["a"]) == []

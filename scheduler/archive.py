"""Ended jobs, kept compact.

A job that has ended no longer changes (until a manual retry revives it), so it is
kept as its encoded document: about a third of the memory of the live record, and
already in the form the API sends. Each document is prefixed with one byte naming
its state, so listings filter by state without decoding.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from common.models import Job
from common.states import TERMINAL, JobState

#: the byte that prefixes an ended job's document, by state
CODES: dict[JobState, bytes] = {
    JobState.COMPLETED: b"c",
    JobState.FAILED: b"f",
    JobState.CANCELLED: b"x",
    JobState.TIMED_OUT: b"t",
}
_CODE = CODES
_STATE: dict[int, JobState] = {code[0]: state for state, code in _CODE.items()}


class _Owner(msgspec.Struct):
    """The one field of a job that listings by owner need."""

    submitted_by: str | None = None


class _OwnerAndSpec(msgspec.Struct):
    """Who submitted a job, and its spec left encoded (its size is what is counted)."""

    submitted_by: str | None = None
    spec: msgspec.Raw = msgspec.Raw(b"")


class JobArchive:
    def __init__(self) -> None:
        self._docs: dict[str, bytes] = {}
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Job)
        self._owner_decoder = msgspec.json.Decoder(_Owner)
        self._spec_decoder = msgspec.json.Decoder(_OwnerAndSpec)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def put(self, job: Job) -> None:
        assert job.state in TERMINAL, job.state
        self._docs[job.id] = _CODE[job.state] + self._encoder.encode(job)

    def put_encoded(self, job_id: str, prefixed_doc: bytes) -> None:
        """Keep a document read back from the store, already prefixed with its code."""
        self._docs[job_id] = prefixed_doc

    def state(self, job_id: str) -> JobState:
        return _STATE[self._docs[job_id][0]]

    def get(self, job_id: str) -> Job | None:
        """A decoded copy of the job; changing it changes nothing stored here."""
        doc = self._docs.get(job_id)
        if doc is None:
            return None
        return self._decoder.decode(memoryview(doc)[1:])

    def stored(self, job_id: str) -> bytes:
        """The document as kept here (prefixed with its state code), as the store gives
        it back on a restart."""
        return self._docs[job_id]

    def owner(self, job_id: str) -> str | None:
        """Who submitted the job, read without decoding the rest of it."""
        return self._owner_decoder.decode(memoryview(self._docs[job_id])[1:]).submitted_by

    def owner_and_spec_bytes(self, job_id: str) -> tuple[str | None, int]:
        """Who submitted the job and its spec's encoded size, without decoding the job."""
        found = self._spec_decoder.decode(memoryview(self._docs[job_id])[1:])
        return found.submitted_by, len(found.spec)

    def raw(self, job_id: str) -> bytes:
        """The job's JSON document as the API sends it."""
        return self._docs[job_id][1:]

    def pop(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        self._docs.pop(job_id, None)
        return job

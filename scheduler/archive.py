"""Ended jobs: an index in memory, their documents in the store.

A job that has ended no longer changes (until a manual retry revives it), so memory
keeps only what the scheduler decides with: its state, who submitted it and the size of
its spec, packed in one integer per job. The document itself is read from the store
when someone asks for it, and a bounded number of recent ones stay cached. Commands
fetch the documents they need before they touch the state (``missing`` / ``take``), so
the state itself never waits on the store.

Without a store behind it (``cache_size=None``) every document stays in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

import msgspec

from common.models import Job
from common.states import TERMINAL, JobState
from scheduler.limits import spec_bytes

#: the byte that prefixes an ended job's document in ``stored``, by state
CODES: dict[JobState, bytes] = {
    JobState.COMPLETED: b"c",
    JobState.FAILED: b"f",
    JobState.CANCELLED: b"x",
    JobState.TIMED_OUT: b"t",
}
_STATE_BY_BYTE: dict[int, JobState] = {code[0]: state for state, code in CODES.items()}
_STATES = tuple(CODES)
_STATE_NUMBER = {state: i for i, state in enumerate(_STATES)}
#: bits of the packed entry: state (3), owner (20), then the spec's size
_STATE_BITS = 3
_OWNER_BITS = 20
#: distinct packed values shared between jobs; past it each job keeps its own
_SHARED_PACKED = 1 << 16


class NotFetched(LookupError):
    """An ended job's document was asked for without being fetched from the store."""


class JobArchive:
    def __init__(self, cache_size: int | None = None) -> None:
        #: job id -> state | owner | spec bytes, packed
        self._index: dict[str, int] = {}
        #: each packed value once: many jobs share one (an int object costs 32 bytes)
        self._packed: dict[int, int] = {}
        self._owners: list[str | None] = [None]
        self._owner_number: dict[str | None, int] = {None: 0}
        #: job id -> its JSON document, most recently used last
        self._docs: OrderedDict[str, bytes] = OrderedDict()
        self.cache_size = cache_size
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Job)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    # --- what is known without the document ------------------------------------------

    def put(self, job: Job) -> None:
        assert job.state in TERMINAL, job.state
        self.put_row(job.id, job.state, job.submitted_by, spec_bytes(job.spec))
        self._cache(job.id, self._encoder.encode(job))

    def put_row(self, job_id: str, state: JobState, owner: str | None, size: int) -> None:
        """Index an ended job as the store lists it at start (its document stays there)."""
        number = self._owner_number.get(owner)
        if number is None:
            number = self._owner_number[owner] = len(self._owners)
            self._owners.append(owner)
        packed = (size << _OWNER_BITS | number) << _STATE_BITS | _STATE_NUMBER[state]
        shared = self._packed.get(packed)
        if shared is None and len(self._packed) < _SHARED_PACKED:
            shared = self._packed[packed] = packed
        self._index[job_id] = packed if shared is None else shared

    def put_encoded(self, job_id: str, prefixed_doc: bytes) -> None:
        """Keep a document prefixed with its state code (see ``stored``)."""
        doc = prefixed_doc[1:]
        job = self._decoder.decode(doc)
        state = _STATE_BY_BYTE[prefixed_doc[0]]
        self.put_row(job_id, state, job.submitted_by, spec_bytes(job.spec))
        self._cache(job_id, bytes(doc))

    def state(self, job_id: str) -> JobState:
        return _STATES[self._index[job_id] & ((1 << _STATE_BITS) - 1)]

    def owner(self, job_id: str) -> str | None:
        """Who submitted the job."""
        number = (self._index[job_id] >> _STATE_BITS) & ((1 << _OWNER_BITS) - 1)
        return self._owners[number]

    def spec_bytes(self, job_id: str) -> int:
        return self._index[job_id] >> (_STATE_BITS + _OWNER_BITS)

    def owner_and_spec_bytes(self, job_id: str) -> tuple[str | None, int]:
        return self.owner(job_id), self.spec_bytes(job_id)

    # --- documents -------------------------------------------------------------------

    def missing(self, job_ids: Iterable[str]) -> list[str]:
        """Those of the ids that are ended jobs whose document is not in memory; the
        others become the most recently used, so that taking the missing ones in does
        not push them out."""
        docs = self._docs
        out = []
        for job_id in job_ids:
            if job_id in docs:
                docs.move_to_end(job_id)
            elif job_id in self._index:
                out.append(job_id)
        return out

    def take(self, docs: dict[str, bytes]) -> None:
        """Documents read from the store for ``missing`` ids. One that was revived or
        replaced meanwhile is not taken: what memory holds is newer."""
        for job_id, doc in docs.items():
            if job_id in self._index and job_id not in self._docs:
                self._cache(job_id, doc)

    def _cache(self, job_id: str, doc: bytes) -> None:
        docs = self._docs
        docs[job_id] = doc
        docs.move_to_end(job_id)
        if self.cache_size is not None:
            while len(docs) > self.cache_size:
                docs.popitem(last=False)

    def _doc(self, job_id: str) -> bytes | None:
        if job_id not in self._index:
            return None
        doc = self._docs.get(job_id)
        if doc is None:
            raise NotFetched(job_id)
        return doc

    def get(self, job_id: str) -> Job | None:
        """A decoded copy of the job; changing it changes nothing stored here."""
        doc = self._doc(job_id)
        return None if doc is None else self._decoder.decode(doc)

    def raw(self, job_id: str) -> bytes:
        """The job's JSON document as the API sends it."""
        doc = self._doc(job_id)
        if doc is None:
            raise KeyError(job_id)
        return doc

    def stored(self, job_id: str) -> bytes:
        """The document prefixed with its state code, as the store hands it back."""
        return CODES[self.state(job_id)] + self.raw(job_id)

    def pop(self, job_id: str) -> Job | None:
        """Take the job out to change it (it is live again until it ends again)."""
        job = self.get(job_id)
        self.drop(job_id)
        return job

    def drop(self, job_id: str) -> None:
        self._index.pop(job_id, None)
        self._docs.pop(job_id, None)

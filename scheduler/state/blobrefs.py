"""Which blobs kept jobs name (the blob sweep deletes only what none names), and who
may read which blob."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from common.models import Job
from scheduler.blobholds import BlobHolds
from scheduler.state.tokens import Tokens


class Gone(NamedTuple):
    """A job retention deleted: what it named goes with it."""

    id: str
    #: its input archive's digest
    inputs: str | None


class NamedBlobs(NamedTuple):
    """The blobs an ended job names, kept while its document is not in memory."""

    inputs: str | None
    outputs: str | None
    checkpoint: str | None

    @classmethod
    def of(cls, job: Job) -> NamedBlobs | None:
        if job.spec.inputs is None and job.outputs is None and job.checkpoint is None:
            return None
        return cls(job.spec.inputs, job.outputs, job.checkpoint)

    @classmethod
    def parse(cls, text: str) -> NamedBlobs:
        """The store's form: ``i:<digest> o:<digest> c:<digest>``, each part optional."""
        parts = dict(p.split(":", 1) for p in text.split())
        return cls(parts.get("i"), parts.get("o"), parts.get("c"))


class BlobRefs(Tokens):
    def _setup(self) -> None:
        super()._setup()
        #: input archive digest -> jobs kept that name it
        self.input_refs: dict[str, int] = {}
        #: outputs or checkpoint digest -> how often jobs kept name it (a job may name
        #: one blob as both); with input_refs, what the blob sweep must not delete
        self.result_refs: dict[str, int] = {}
        #: ended job -> the blobs it names (only jobs that name any)
        self.ended_blobs: dict[str, NamedBlobs] = {}
        #: who may read which blob, and what each token's blobs cost its quota
        self.blob_holds = BlobHolds()

    def names_blob(self, digest: str) -> bool:
        """Whether a job kept here names the blob: as its input archive, its outputs or
        its checkpoint (the blob sweep deletes only blobs this says no to)."""
        return digest in self.input_refs or digest in self.result_refs

    def _count_blobs(self, named: NamedBlobs, delta: int) -> None:
        """Count (or, with -1, stop counting) what a kept job names."""
        if named.inputs is not None and delta > 0:
            self.input_refs[named.inputs] = self.input_refs.get(named.inputs, 0) + 1
        self._result_ref(named.outputs, delta)
        self._result_ref(named.checkpoint, delta)

    def _count_job(self, job: Job) -> None:
        named = NamedBlobs.of(job)
        if named is not None:
            self._count_blobs(named, 1)

    def release_inputs(self, gone: Iterable[Gone]) -> list[str]:
        """Input archives no kept job names any more, once ``gone`` are deleted.

        Several jobs may share one input archive, so it goes with the last of them.
        """
        free = []
        for job in gone:
            digest = job.inputs
            if digest is None:
                continue
            left = self.input_refs.get(digest, 1) - 1
            if left > 0:
                self.input_refs[digest] = left
            else:
                self.input_refs.pop(digest, None)
                free.append(digest)
        return free

    def _set_outputs(self, job: Job, digest: str | None) -> None:
        self._result_ref(job.outputs, -1)
        self._result_ref(digest, 1)
        job.outputs = digest
        self._owner_holds(job, digest)

    def _set_checkpoint(self, job: Job, attempt: int, digest: str) -> None:
        # The checkpoint it replaces is no longer named (the blob sweep deletes it).
        self._result_ref(job.checkpoint, -1)
        self._result_ref(digest, 1)
        job.checkpoint = digest
        job.checkpoint_attempt = attempt
        self._owner_holds(job, digest)

    def _owner_holds(self, job: Job, digest: str | None) -> None:
        # A job's owner may fetch its outputs and checkpoint by digest too.
        if digest is not None and job.submitted_by is not None:
            self.blob_holds.hold(digest, job.submitted_by, 0, self.changes)

    def _result_ref(self, digest: str | None, delta: int) -> None:
        if digest is None:
            return
        left = self.result_refs.get(digest, 0) + delta
        if left > 0:
            self.result_refs[digest] = left
        else:
            self.result_refs.pop(digest, None)

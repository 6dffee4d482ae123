"""Loading the state read back from the store, and handing each change set over."""

from __future__ import annotations

from common.models import Resources
from common.states import ON_NODE, TERMINAL, JobState
from scheduler import gpus
from scheduler.blobholds import BlobHolds
from scheduler.events import EventLog
from scheduler.nodes import add
from scheduler.state.blobrefs import NamedBlobs
from scheduler.state.lifecycle import request_of, share_strings
from scheduler.state.queries import Queries
from scheduler.store.base import Changes, Loaded
from scheduler.tokens import TokenBook

#: an encoded job that may name a blob (an input archive, ending in ``puts":"`` like
#: outputs, or a checkpoint) contains one of these; checking two keeps loading cheap
_NAMES_BLOBS = (b'puts":"', b'"checkpoint":"')


class Loading(Queries):
    def load(self, loaded: Loaded) -> None:
        """Rebuild the state read from the store; allocations are recomputed from jobs."""
        self.events = EventLog(loaded.last_index)
        self.events_pruned_below = loaded.events_pruned_below
        self.booted = self.clock()
        for node in loaded.nodes:
            node.allocated = Resources()
            for held in node.releasing:
                node.allocated = add(node.allocated, held.resources)
            node.running_jobs = []
            self.nodes[node.id] = node
            self.node_by_name[node.name] = node.id
        self._load_ended(loaded)
        for job in loaded.jobs:
            self._count_job(job)
            self._note_array(job)  # an array's tasks share one spec again
            share_strings(job)
            self.jobs[job.id] = job
            self.counts[job.state] += 1
        for job in loaded.jobs:
            # Only now: a job's dependencies may come after it in what was loaded.
            if job.state is JobState.QUEUED:
                self._enqueue(job, loading=True)
            elif job.state in ON_NODE:
                self._owner_runs(job, 1)
                if job.node_id in self.nodes:
                    node = self.nodes[job.node_id]
                    node.allocated = add(node.allocated, request_of(job))
                    node.running_jobs.append(job.id)
        for node in self.nodes.values():
            node.device_jobs = gpus.holders(
                (self.jobs[j] for j in node.running_jobs), node.releasing
            )
        self.ids = sorted([*self.jobs, *self.archive])
        if self.ids:
            self._last_id = int(self.ids[-1], 16)
        self.idempotency = dict(loaded.idempotency)
        self.group_limits = dict(loaded.groups)
        self.tokens = TokenBook(loaded.tokens)
        self.owners = {o.name: o for o in loaded.owners}
        at = max((o.usage_at for o in loaded.owners), default=self.booted)
        self.fair.load({o.name: o.usage_cpu_s for o in loaded.owners}, at=at, now=self.booted)
        self.log_ends = dict(loaded.log_ends)
        self.blob_holds = BlobHolds(loaded.blob_holds)
        for node in self.nodes.values():
            self._refresh_node(node, record=False)

    def _load_ended(self, loaded: Loaded) -> None:
        archive = self.archive
        counts = self.counts
        rows = loaded.ended
        put, states, owners, sizes = archive.put_row, rows.states, rows.owners, rows.spec_bytes
        for i, job_id in enumerate(rows.ids):
            put(job_id, states[i], owners[i], sizes[i])
        for state in states:
            counts[state] += 1
        for i, blobs in rows.blobs.items():
            named = self.ended_blobs[rows.ids[i]] = NamedBlobs.parse(blobs)
            self._count_blobs(named, 1)
        for job_id, state, doc in loaded.archived:
            archive.put_encoded(job_id, doc)
            counts[state] += 1
            if _NAMES_BLOBS[0] in doc or _NAMES_BLOBS[1] in doc:
                ended = archive.get(job_id)
                named_or_none = NamedBlobs.of(ended) if ended is not None else None
                if named_or_none is not None:
                    self.ended_blobs[job_id] = named_or_none
                    self._count_blobs(named_or_none, 1)

    def take_changes(self) -> Changes:
        changes, self.changes = self.changes, Changes()
        for job in changes.jobs.values():
            if job.state in TERMINAL and self.jobs.get(job.id) is job:
                # It will not change again: only its index entry stays in memory.
                self._archive(job)
        return changes

"""A standby's state: what the leader committed, applied to this scheduler's memory.

A standby runs no placement, liveness or retention; it serves reads. So it keeps what
reads use (jobs live and ended, counts, the id order, the queue and who queued what,
nodes with their allocations, tokens, groups) and applies each batch the leader
committed by taking every changed record's old version out and putting the new one
in, through the same steps that loading uses. What only the leader's writes need (blob
references, per-token spec bytes, idempotency keys, log ends) is not followed: a
standby that takes over loads its state afresh from the store, as a restart does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from common.models import Job, Node, NodeMetrics, Resources
from common.states import ON_NODE, TERMINAL, JobState
from scheduler import gpus
from scheduler.events import Event
from scheduler.nodes import add
from scheduler.readyqueue import ReadyQueue
from scheduler.state.blobrefs import NamedBlobs
from scheduler.state.lifecycle import request_of, share_strings
from scheduler.state.loading import Loading
from scheduler.state.records import Effects
from scheduler.store.records import Changes
from scheduler.tokens import TokenRow


@dataclass(slots=True)
class Followed:
    """What one or more of the leader's commits changed, newest version of each record."""

    jobs: list[Job] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    tokens: list[TokenRow] = field(default_factory=list)
    #: digests of tokens deleted (not revoked: a revoked token is a changed row)
    dropped_tokens: list[str] = field(default_factory=list)
    groups: dict[str, int] = field(default_factory=dict)
    #: jobs deleted by retention
    deleted_jobs: list[str] = field(default_factory=list)
    forgotten_nodes: list[str] = field(default_factory=list)
    #: (job id, reason) of each job.pending event: the first job of a shape that the
    #: leader's pass stopped at, and why (the rest of the shape shows that reason too)
    pending: list[tuple[str, str]] = field(default_factory=list)
    #: (node id, when, metrics) of each node.metrics event: the leader does not store
    #: every heartbeat, it tells one in a while
    heard: list[tuple[str, datetime, dict[str, Any]]] = field(default_factory=list)

    @classmethod
    def of(cls, changes: Changes) -> Followed:
        """A change set as a standby sees it once committed."""
        return cls(
            jobs=list(changes.jobs.values()),
            nodes=list(changes.nodes.values()),
            tokens=list(changes.tokens),
            dropped_tokens=list(changes.revoked_tokens),
            groups=dict(changes.groups),
            forgotten_nodes=list(changes.forgotten_nodes),
            pending=pending_of(changes.events),
            heard=heard_of(changes.events),
        )


def pending_of(events: Iterable[Event]) -> list[tuple[str, str]]:
    """The (job id, reason) of each job.pending event, oldest first: the reason the
    jobs of its shape share (a reserved job's own reason names its reservation)."""
    return [
        (e.job_id, str(e.data.get("shared_reason") or e.data["reason"]))
        for e in events
        if e.type == "job.pending" and e.job_id is not None and e.data
    ]


def heard_of(events: Iterable[Event]) -> list[tuple[str, datetime, dict[str, Any]]]:
    """The (node id, time, metrics) of each node.metrics event, oldest first."""
    return [
        (e.node_id, e.ts, e.data)
        for e in events
        if e.type == "node.metrics" and e.node_id is not None and e.data is not None
    ]


class Following(Loading):
    def reset(self) -> None:
        """Forget everything, to load afresh: a scheduler that takes or leaves the lead
        loads the state as a restart does."""
        cache_size, store_behind = self.archive.cache_size, self.store_behind
        # Blocking queries on the old log answer now; they ask again.
        self.events.wake_all()
        self.changes = Changes()
        self.effects = Effects()
        self.queue = ReadyQueue()
        self._setup()
        self.archive.cache_size, self.store_behind = cache_size, store_behind

    def follow(self, followed: Followed) -> None:
        """Apply what the leader committed (events are the service's to apply)."""
        touched: set[str] = set()
        for node in followed.nodes:
            self._put_node(node)
            touched.add(node.id)
        for job in followed.jobs:
            share_strings(job)
            was = self._take_out(job, touched)
            self._put_in(job, was, touched)
        if followed.deleted_jobs:
            self.forget(followed.deleted_jobs)
        for node_id in followed.forgotten_nodes:
            gone = self.nodes.pop(node_id, None)
            if gone is not None and self.node_by_name.get(gone.name) == node_id:
                del self.node_by_name[gone.name]
            self._views.pop(node_id, None)
            touched.discard(node_id)
        for row in followed.tokens:
            self.tokens.put(row)
        for digest in followed.dropped_tokens:
            self.tokens.drop(digest)
        self.group_limits.update(followed.groups)
        for job_id, why in followed.pending:
            shape = self.queue.shape_of(job_id)
            if shape is not None and shape.head() == job_id:
                shape.sleep(why, self.jobs[job_id].pending)
        for node_id, at, metrics in followed.heard:
            heard = self.nodes.get(node_id)
            if heard is not None and (
                heard.last_heartbeat_at is None or heard.last_heartbeat_at < at
            ):
                heard.last_heartbeat_at = at
                heard.metrics = msgspec.convert(metrics, NodeMetrics)
                touched.add(node_id)
        for node_id in touched:
            self._recount(node_id)
        # As the leader's next pass does: the retry's wait is what the job shows.
        self._fresh_backoff.clear()
        self._release_due(self.clock())
        # Rebuilt when next asked for: it is the leader's quota, not a read.
        self._spec_bytes = None
        # A standby commits nothing and runs no pass: what the steps above asked for
        # (a pass, a wake-up) is the leader's business.
        self.take_effects()

    def _put_node(self, node: Node) -> None:
        """A node's new document, with the jobs it runs as the leader listed them."""
        old = self.nodes.get(node.id)
        if old is not None and old.name != node.name:
            self.node_by_name.pop(old.name, None)
        self.nodes[node.id] = node
        self.node_by_name[node.name] = node.id

    def _take_out(self, new: Job, touched: set[str]) -> JobState | None:
        """Remove the version of a job this state holds from everything derived; its
        state, or None for a job not known yet."""
        job_id = new.id
        old = self.jobs.pop(job_id, None)
        if old is not None:
            self.counts[old.state] -= 1
            if old.state is JobState.QUEUED:
                self._dequeued(old)
            elif old.state in ON_NODE and old.node_id is not None:
                if new.state in ON_NODE and new.node_id == old.node_id:
                    # Still there, in its place among the node's jobs.
                    return old.state
                node = self.nodes.get(old.node_id)
                if node is not None and job_id in node.running_jobs:
                    node.running_jobs.remove(job_id)
                    touched.add(node.id)
            return old.state
        if job_id in self.archive:
            state = self.archive.state(job_id)
            self.counts[state] -= 1
            self.archive.drop(job_id)
            self.ended_blobs.pop(job_id, None)
            return state
        return None

    def _put_in(self, job: Job, was: JobState | None, touched: set[str]) -> None:
        """Add a job's new version as loading does."""
        if was is None:
            # A new job, in submission order.
            bisect.insort(self.ids, job.id)
            self._last_id = max(self._last_id, int(job.id, 16))
            if self._owned is not None and job.submitted_by is not None:
                bisect.insort(self._owned.setdefault(job.submitted_by, []), job.id)
        self.counts[job.state] += 1
        if job.state in TERMINAL:
            self.archive.put(job)
            named = NamedBlobs.of(job)
            if named is not None:
                self.ended_blobs[job.id] = named
            if was not in TERMINAL:
                self._dependency_ended(job, job.state)
            return
        self.jobs[job.id] = job
        if job.state is JobState.QUEUED:
            self._enqueue(job, loading=True)
        elif job.state in ON_NODE and job.node_id in self.nodes:
            # Its node's document lists it already when it came in the same batch.
            node = self.nodes[job.node_id]
            if job.id not in node.running_jobs:
                node.running_jobs.append(job.id)
            touched.add(node.id)

    def _recount(self, node_id: str) -> None:
        """A node's allocation from its held attempts and the jobs it runs, as loading
        computes it; its state stays as the leader wrote it."""
        node = self.nodes.get(node_id)
        if node is None:
            return
        allocated = Resources()
        for held in node.releasing:
            allocated = add(allocated, held.resources)
        running = []
        for job_id in node.running_jobs:
            job = self.jobs.get(job_id)
            if job is not None:
                allocated = add(allocated, request_of(job))
                running.append(job)
        node.allocated = allocated
        node.device_jobs = gpus.holders(running, node.releasing)
        self._views.pop(node_id, None)


__all__ = ["Followed", "Following"]

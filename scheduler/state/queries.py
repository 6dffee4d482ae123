"""Questions about the state that change nothing: listings, groups, statistics."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from common.models import Job, Resources
from common.states import JobState, NodeState
from scheduler.nodes import add, sub
from scheduler.state.liveness import Liveness


class Queries(Liveness):
    def shown(self, job: Job) -> Job:
        """The job as a client sees it: a queued job behind the first of a sleeping shape
        waits for the same reason as that one (a reserved one says its own)."""
        if job.state is JobState.QUEUED and job.reservation is None:
            why = self.queue.reason_of(job.id)
            if why is not None:
                job.reason = why
                job.pending = self.queue.pending_of(job.id)
        return job

    def iter_ids(
        self, state: JobState | None, before: str | None, owner: str | None = None
    ) -> Iterator[str]:
        """Ids of jobs newest first, optionally of one state and one owner, below
        ``before``; read from memory only (an ended job's document is not needed)."""
        ids = self.ids if owner is None else self._ids_of(owner)
        end = bisect.bisect_left(ids, before) if before is not None else len(ids)
        for i in range(end - 1, -1, -1):
            job_id = ids[i]
            job = self.jobs.get(job_id)
            if job is not None:
                if state is None or job.state is state:
                    yield job_id
            elif job_id in self.archive and (state is None or self.archive.state(job_id) is state):
                yield job_id

    def iter_jobs(
        self, state: JobState | None, before: str | None, owner: str | None = None
    ) -> Iterator[Job]:
        """Jobs newest first (see iter_ids); ended ones must be in memory or fetched."""
        for job_id in self.iter_ids(state, before, owner):
            job = self.find(job_id)
            if job is not None:
                yield self.shown(job)

    def _ids_of(self, owner: str) -> list[str]:
        if self._owned is None:
            owned: dict[str, list[str]] = {}
            for job_id in self.ids:
                who = self.submitter_of(job_id)
                if who is not None:
                    owned.setdefault(who, []).append(job_id)
            self._owned = owned
        # Ids of deleted jobs may linger here; iter_ids skips what it cannot find.
        return self._owned.get(owner, [])

    def groups(self, owner: str | None = None) -> dict[str, dict[str, int | None]]:
        """Every known group with its limit, its jobs on nodes and its queued jobs; with
        ``owner``, only the groups of that owner's jobs, counting only its jobs."""
        active = self._active_by_group(owner)
        queued: dict[str, int] = {}
        for job_id in self.queue:
            job = self.jobs[job_id]
            if job.spec.group is not None and owner in (None, job.submitted_by):
                queued[job.spec.group] = queued.get(job.spec.group, 0) + 1
        names = set(active) | set(queued) | (set(self.group_limits) if owner is None else set())
        return {
            g: {
                "max_concurrent": self.group_limits.get(g),
                "active": active.get(g, 0),
                "queued": queued.get(g, 0),
            }
            for g in sorted(names)
        }

    def stats(self) -> dict[str, Any]:
        capacity = Resources()
        allocated = Resources()
        nodes = dict.fromkeys((s.value for s in NodeState), 0)
        for n in self.nodes.values():
            nodes[n.state.value] += 1
            if n.state is not NodeState.OFFLINE:
                capacity = add(capacity, sub(n.capacity, n.reserved))
                allocated = add(allocated, n.allocated)
        return {
            "jobs": {s.value: c for s, c in self.counts.items()},
            "nodes": nodes,
            "capacity": capacity,
            "allocated": allocated,
            "queue_depth": len(self.queue),
            "index": self.events.committed_index,
        }

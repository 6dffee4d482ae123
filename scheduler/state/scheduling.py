"""The placement pass: gate the queue, place what fits, reserve it on its node.

A pass walks the queue's shapes in queue order (a heap of their first jobs), offering
one job at a time to a placement pass over the nodes. A shape stops at its first job
that cannot be placed and sleeps with that reason until something could make it fit,
so a pass looks only at the jobs it places and one more per shape.

A shape that sleeps because of the nodes says why node by node ("0/5 nodes are
available: 2 at their parallel limit, 1 draining") and keeps the counts by cause in the
job's ``pending``; they are counted once per shape per pass (O(nodes)), never per job.
"""

from __future__ import annotations

import heapq

from common.models import Job, Node
from common.states import JobState, NodeState
from scheduler import placement, queue
from scheduler.nodes import add
from scheduler.readyqueue import Entry, Shape, entry
from scheduler.state.sharing import Sharing
from scheduler.state.lifecycle import request_of
from scheduler.state.records import dt

#: reasons of a job that did not fit in the last pass (it may be starving)
_BLOCKED = ("no node", placement.REASON_NODES_PREFIX, queue.HELD)


class Scheduling(Sharing):
    def place(self) -> list[str]:
        """One placement pass. Returns the ids of nodes given new jobs.

        A job that has waited past the starvation bound without fitting holds a node:
        jobs behind it may not use that node until it has been placed.
        """
        now = self.clock()
        self._gate(now)
        shapes = self.queue.shapes()
        if not shapes:
            return []
        if not self.nodes:
            for shape in shapes:
                if not shape.asleep:
                    self._stop(shape, placement.REASON_NO_ELIGIBLE)
            return []
        # Only groups with a limit need counting, and most clusters have none.
        active = self._active_by_group() if self.group_limits else {}
        room: dict[str, int | None] = {}
        starving = self._starving(shapes, now)
        if starving is not None:
            # It is looked at even if its shape sleeps: it may take a node's hold.
            of_starving = self.queue.shape_of(starving.id)
            if of_starving is not None:
                of_starving.asleep = False
        awake = [s for s in shapes if not s.asleep]
        if starving is None:
            return self._run(awake, now, active, room, until=None, held=None)
        touched = self._run(awake, now, active, room, until=starving, held=None)
        held = None
        if starving.id in self.queue:
            views = [self._cached_view(n) for n in self.nodes.values()]
            held = queue.hold_candidate(views, starving, now)
            if held is not None:
                name = self.nodes[held].name
                job = self.jobs[starving.id]
                self._pending(
                    job, f"{queue.HELD}: node {name}, until it has room for this job", job.pending
                )
        awake = [s for s in awake if not s.asleep and len(s)]
        return touched + self._run(awake, now, active, room, until=None, held=held)

    def _gate(self, now: float) -> None:
        """What decides itself before the nodes are looked at: retries whose backoff
        ended join their shapes, jobs whose dependency failed for good fail, and jobs
        still waiting on dependencies say on which."""
        for job_id in self._fresh_backoff:
            job = self.jobs.get(job_id)
            if job is not None and self.queue.backing_off(job_id):
                self._pending(job, queue.WAITING_TO_RETRY)
        self._fresh_backoff.clear()
        self._release_due(now)
        doomed: list[tuple[Job, str]] = []
        for job_id in self.deps.take_doomed():
            # A dependency ended without completing: judged once, against the states
            # of now (it may have been retried since), in the first pass it may run.
            job = self.jobs[job_id]
            if job.not_before is not None and job.not_before.timestamp() > now:
                self.deps.doom_later(job_id)
                continue
            failed = self.deps.failed(job_id, job.spec.depends_on, self.state_of)
            if failed is not None:
                doomed.append((job, failed))
        for job_id in self.deps.take_stale():
            job = self.jobs[job_id]
            self._pending(job, self.deps.reason(job_id, job.spec.depends_on, self.state_of))
        for job, dep in doomed:
            asked = dict(queue.wanted(d) for d in job.spec.depends_on).get(dep)
            ended = "completed" if asked == "failed" else "did not complete"
            why = f"{queue.DEPENDENCY_FAILED}: job {dep} {ended}"
            job.error = why
            self._set_state(job, JobState.FAILED, reason=why)

    def _release_due(self, now: float) -> None:
        """Retries whose backoff has ended join their shapes."""
        nb = self.queue.next_due()
        if nb is not None and nb <= now:
            self.queue.release_due(now, lambda job_id: self.jobs[job_id].spec.group)

    def _starving(self, shapes: list[Shape], now: float) -> placement.JobRequest | None:
        """The first job in queue order that waited past the bound and did not fit in
        the last pass (or already holds a node, and keeps it). Only the first job of
        each shape can be it: the others have waited no longer and fit no better."""
        bound = self.config.starvation_s
        found: tuple[Entry, placement.JobRequest] | None = None
        for shape in shapes:
            head = shape.head()
            if head is None:
                continue
            job = self.jobs[head]
            since = job.queued_at.timestamp() if job.queued_at is not None else now
            last = job.reason or ""
            if now - since > bound and last.startswith(_BLOCKED):
                req = self.queue.requests[head]
                if found is None or entry(req) < found[0]:
                    found = (entry(req), req)
        return found[1] if found else None

    def _run(
        self,
        shapes: list[Shape],
        now: float,
        active: dict[str, int],
        room: dict[str, int | None],
        *,
        until: placement.JobRequest | None,
        held: str | None,
    ) -> list[str]:
        """Offer the shapes' jobs in queue order (up to ``until``, included) to a pass
        over the nodes but ``held``; a shape stops at its first job left unplaced."""
        if not shapes:
            return []
        views = [self._cached_view(n) for n in self.nodes.values() if n.id != held]
        one_pass = placement.Pass(
            views,
            now=now,
            strategy=self.config.strategy,
            rng=self.rng,
            min_cpu=min(s.request.cpu for s in shapes),
            min_memory=min(s.request.memory_mb for s in shapes),
        )
        order = self._order
        heads = [(order(s.entries[0], s.request.owner), i) for i, s in enumerate(shapes) if s.entries]
        heapq.heapify(heads)
        last = None if until is None else order(entry(until), until.owner)
        touched: list[str] = []
        while heads:
            first, i = heads[0]
            if last is not None and first > last:
                break
            heapq.heappop(heads)
            shape = shapes[i]
            req = self.queue.requests[first[3]]
            job = self.jobs[req.id]
            why = self._over_quota(req) or self._group_full(shape, active, room)
            if why is not None:
                self._stop(shape, why)
                continue
            outcome = one_pass.offer(req)
            if isinstance(outcome, placement.Decision):
                node = self.nodes[outcome.node_id]
                # Reserve with a re-check against the node as it is now.
                if placement.fits(self.node_view(node), req, now):
                    self._assign(job, node)
                    touched.append(node.id)
                    if shape.entries:
                        heapq.heappush(heads, (order(shape.entries[0], req.owner), i))
                    continue
                # The pass's view of the node was stale: no count would be right.
                self._stop(shape, placement.REASON_NO_FIT)
                continue
            preempting = self._preempt_for(job, req, now)
            if preempting is not None:
                self._stop(shape, preempting)
                continue
            pending = one_pass.pending(req, self._is_offline)
            if held is not None:
                pending[placement.HELD] = 1
            if sum(pending.values()) == len(self.nodes):
                self._stop(
                    shape, placement.waiting_sentence(len(self.nodes), pending, req), pending
                )
            else:
                self._stop(shape, outcome)
        return touched

    def _is_offline(self, node_id: str) -> bool:
        return self.nodes[node_id].state is NodeState.OFFLINE

    def _group_full(
        self, shape: Shape, active: dict[str, int], room: dict[str, int | None]
    ) -> str | None:
        """Why the shape's next job may not start for its concurrency group, if so;
        otherwise it takes one of the group's places for this pass."""
        group = shape.group
        if group is None:
            return None
        if group not in room:
            room[group] = queue.group_room(active.get(group, 0), self.group_limits.get(group))
        left = room[group]
        if left is None:
            return None
        if left <= 0:
            limit = self.group_limits.get(group)
            return f"{queue.GROUP_LIMIT}: group {group} runs its limit of {limit}"
        room[group] = left - 1
        return None

    def _stop(self, shape: Shape, why: str, pending: dict[str, int] | None = None) -> None:
        """The shape's first job cannot be placed: it sleeps with that reason (and, when
        the reason is the nodes, how many of them are blocked by each cause).

        A job that becomes first of a shape already showed the shape's reason, so only a
        change of the shape's reason is stored and told (coalesced: a busy queue whose
        first jobs come and go does not write or send an event per pass)."""
        told = (shape.reason, shape.pending)
        shape.sleep(why, pending)
        head = shape.head()
        if head is None:
            return
        job = self.jobs[head]
        if (why, pending) == told:
            job.reason, job.pending = why, pending
        else:
            self._pending(job, why, pending)

    def _pending(self, job: Job, why: str, pending: dict[str, int] | None = None) -> None:
        """Say why a queued job waits, with the counts of nodes by cause when the reason
        is the nodes; a change is stored and told as an event."""
        if job.reason != why or job.pending != pending:
            job.reason, job.pending = why, pending
            self._event("job.pending", job=job, data={"reason": why, "pending": pending})

    def _dequeued(self, job: Job) -> None:
        """A job that leaves the queue no longer waits for anything."""
        super()._dequeued(job)
        job.pending = None

    def _assign(self, job: Job, node: Node) -> None:
        job.node_id = node.id
        job.assigned_at = dt(self.clock())
        job.not_before = None
        node.allocated = add(node.allocated, request_of(job))
        node.running_jobs.append(job.id)
        self._set_state(job, JobState.ASSIGNED)
        self._refresh_node(node)
        self.changes.nodes[node.id] = node
        self._wake_node(node.id)

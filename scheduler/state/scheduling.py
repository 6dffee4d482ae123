"""The placement pass: gate the queue, place what fits, reserve it on its node.

A pass walks the queue's shapes in queue order (a heap of their first jobs), offering
one job at a time to a placement pass over the nodes. A shape stops at its first job
that cannot be placed and sleeps with that reason until something could make it fit,
so a pass looks only at the jobs it places and one more per shape.

A shape that sleeps because of the nodes says why node by node ("0/5 nodes are
available: 2 at their parallel limit, 1 draining") and keeps the counts by cause in the
job's ``pending``; they are counted once per shape per pass (O(nodes)), never per job.

The first ``--reservations`` jobs in queue order that fit nowhere each get a
reservation (scheduler.reservations): room on the node where the running jobs'
estimates free it earliest. Later jobs of the pass may use that node only where they
do not delay it. Reservations are made anew every pass, in queue order: the jobs that
held one are looked at again even if their shapes sleep.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from common.models import Job, Node, Reservation
from common.states import ON_NODE, JobState, NodeState
from scheduler import gpus, placement, queue, reservations
from scheduler.nodes import add
from scheduler.readyqueue import Shape
from scheduler.reservations import Held, Release
from scheduler.state.lifecycle import estimate_of, request_of
from scheduler.state.records import dt, ts
from scheduler.state.sharing import Sharing


#: a reservation's start is told again once it moves by this much (seconds)
RESTATE_S = 60.0


def reserved_reason(reservation: Reservation, why: str) -> str:
    """"reserved: node n3 from 2026-12-03 14:05:00 UTC; 0/5 nodes are available: ..."
    (or "..., start unknown; ..."): where and when the job is expected to start, then
    why it cannot start now."""
    start = reservation.start
    when = "start unknown" if start is None else f"from {start:%Y-%m-%d %H:%M:%S} UTC"
    return f"{reservations.RESERVED}: node {reservation.node} {when}; {why}"


class Scheduling(Sharing):
    def _setup(self) -> None:
        super()._setup()
        #: queued job -> its reservation, as the last pass made it
        self.reserved: dict[str, Reservation] = {}
        #: node -> (the placement view they were worked out with, its releases)
        self._release_cache: dict[str, tuple[placement.NodeView, list[Release]]] = {}

    def place(self) -> list[str]:
        """One placement pass. Returns the ids of nodes given new jobs."""
        now = self.clock()
        self._gate(now)
        shapes = self.queue.shapes()
        previous, self.reserved = self.reserved, {}
        self._preemptible = None
        touched: list[str] = []
        if not self.nodes:
            for shape in shapes:
                if not shape.asleep:
                    self._stop(shape, placement.REASON_NO_ELIGIBLE)
        elif shapes:
            for job_id in previous:
                of_reserved = self.queue.shape_of(job_id)
                if of_reserved is not None:
                    of_reserved.asleep = False
            # Only groups with a limit need counting, and most clusters have none.
            active = self._active_by_group() if self.group_limits else {}
            awake = [s for s in shapes if not s.asleep]
            touched = self._run(awake, now, active, {})
        for job_id in previous.keys() - self.reserved.keys():
            job = self.jobs.get(job_id)
            if job is not None and job.reservation is not None:
                # Not reserved again and not looked at: it waits as its shape does.
                why = self.queue.reason_of(job_id) or placement.REASON_NO_FIT
                self._pending(job, why, self.queue.pending_of(job_id))
        return touched

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

    def _run(
        self,
        shapes: list[Shape],
        now: float,
        active: dict[str, int],
        room: dict[str, int | None],
    ) -> list[str]:
        """Offer the shapes' jobs in queue order to a pass over the nodes; a shape stops
        at its first job left unplaced."""
        if not shapes:
            return []
        views = [self._cached_view(n) for n in self.nodes.values()]
        one_pass = placement.Pass(
            views,
            now=now,
            strategy=self.config.strategy,
            rng=self.rng,
            min_cpu=min(s.request.cpu for s in shapes),
            min_memory=min(s.request.memory_mb for s in shapes),
            size_aware=self.config.size_aware,
        )
        held: dict[str, Held] = {}
        releases = self._releases(now)
        known: dict[tuple[object, ...], tuple[int, reservations.Options]] = {}

        def options(req: placement.JobRequest) -> reservations.Options:
            """Where a job of this size could start, worked out again only once the
            pass has placed another job; on the nodes as they are now, with the jobs
            this pass placed on them."""
            size = (placement.filter_key(req), req.cpu, req.memory_mb, req.gpus)
            found = known.get(size)
            if found is None or found[0] != one_pass.placed:
                views_now = [self._cached_view(n) for n in self.nodes.values()]
                found = known[size] = (
                    one_pass.placed,
                    reservations.options(
                        views_now, releases, req, now, size_aware=self.config.size_aware
                    ),
                )
            return found[1]

        order = self._order
        heads = [
            (order(s.entries[0], s.request.owner), i) for i, s in enumerate(shapes) if s.entries
        ]
        heapq.heapify(heads)
        touched: list[str] = []
        while heads:
            first, i = heapq.heappop(heads)
            shape = shapes[i]
            fresh = order(shape.entries[0], shape.request.owner)
            if fresh != first:
                # Its owner's usage grew with a job placed since the key was made (keys
                # only grow in a pass): it goes back in at its place now.
                heapq.heappush(heads, (fresh, i))
                continue
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
            counted = sum(pending.values()) == len(self.nodes)
            why = placement.waiting_sentence(len(self.nodes), pending, req) if counted else outcome
            plan = None
            if outcome == placement.REASON_NO_FIT and len(self.reserved) < self.config.reservations:
                plan = reservations.choose(options(req), req, held)
            if plan is None:
                self._stop(shape, why, pending if counted else None)
                continue
            held[plan.node_id] = plan.held
            one_pass.hold(plan.node_id, plan.held)
            self._stop_reserved(shape, job, plan, why, pending if counted else None)
        return touched

    def _releases(self, now: float) -> Callable[[str], Sequence[Release]]:
        """A node's running jobs as they are expected to end (start + estimate). Kept
        with the node's placement view, which is made anew whenever the node changes
        (a job placed there or gone from it), and worked out only when a reservation
        first looks at the node."""
        known = self._release_cache

        def of(node_id: str) -> Sequence[Release]:
            view = self._views.get(node_id)
            found = known.get(node_id)
            if found is not None and found[0] is view and view is not None:
                return found[1]
            node = self.nodes[node_id]
            running = []
            for job_id in node.running_jobs:
                other = self.jobs.get(job_id)
                if other is None or other.state not in ON_NODE:
                    continue
                began = ts(other.started_at) or ts(other.assigned_at) or now
                r = other.spec.resources
                running.append((began, estimate_of(other.spec), r.cpu, r.memory_mb, r.gpus))
            releases = reservations.releases_of(running)
            if view is not None:
                known[node_id] = (view, releases)
            return releases

        return of

    def _stop_reserved(
        self,
        shape: Shape,
        job: Job,
        plan: reservations.Plan,
        why: str,
        pending: dict[str, int] | None,
    ) -> None:
        """The shape's first job fits nowhere but has a reservation: the shape sleeps
        with the nodes' reason, and its first job says where and when it is expected to
        start."""
        shape.sleep(why, pending)
        start = plan.held.start
        reservation = Reservation(
            node_id=plan.node_id,
            node=self.nodes[plan.node_id].name,
            start=datetime.fromtimestamp(start, UTC) if start != float("inf") else None,
        )
        told = job.reservation
        if (
            told is not None
            and told.node_id == reservation.node_id
            and told.start is not None
            and reservation.start is not None
            and abs((told.start - reservation.start).total_seconds()) < RESTATE_S
        ):
            # A start that moved a little (a job there ran past its estimate, so the
            # room is expected "now" at every pass) is not told again each pass.
            reservation = told
        self.reserved[job.id] = reservation
        self._pending(job, reserved_reason(reservation, why), pending, reservation, why)

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
        if (why, pending) == told and job.reservation is None:
            job.reason, job.pending = why, pending
        else:
            self._pending(job, why, pending)

    def _pending(
        self,
        job: Job,
        why: str,
        pending: dict[str, int] | None = None,
        reservation: Reservation | None = None,
        shared: str | None = None,
    ) -> None:
        """Say why a queued job waits, with the counts of nodes by cause when the reason
        is the nodes, and its reservation if it has one (then ``shared`` is the reason
        the jobs of its shape behind it show); a change is stored and told as an
        event."""
        if job.reason != why or job.pending != pending or job.reservation != reservation:
            job.reason, job.pending, job.reservation = why, pending, reservation
            data: dict[str, object] = {"reason": why, "pending": pending}
            if reservation is not None:
                data["reservation"] = reservation
                data["shared_reason"] = shared
            self._event("job.pending", job=job, data=data)

    def _enqueue(self, job: Job, *, loading: bool = False) -> None:
        super()._enqueue(job, loading=loading)
        if job.reservation is not None:
            # Loaded with one (a restart, a new leader): the next pass makes it anew
            # or drops it.
            self.reserved[job.id] = job.reservation

    def _dequeued(self, job: Job) -> None:
        """A job that leaves the queue no longer waits for anything."""
        super()._dequeued(job)
        job.pending = None
        job.reservation = None
        self.reserved.pop(job.id, None)

    def _assign(self, job: Job, node: Node) -> None:
        job.node_id = node.id
        job.assigned_at = dt(self.clock())
        job.not_before = None
        # Named GPUs: never one held by another job (placement counted them free).
        job.gpu_devices = gpus.take(node, job.id, job.spec.resources.gpus)
        node.allocated = add(node.allocated, request_of(job))
        node.running_jobs.append(job.id)
        self._set_state(job, JobState.ASSIGNED)
        self._refresh_node(node)
        self.changes.nodes[node.id] = node
        self._wake_node(node.id)

"""The job lifecycle: the one place where a job changes state, with what each change
does to the queue, its node, its dependents and its history."""

from __future__ import annotations

import heapq
import sys
from typing import Any

from common import policy
from common.errors import NotFound
from common.models import (
    Attempt,
    HeldAttempt,
    Job,
    JobSpec,
    Node,
    Owner,
    OwnerStatus,
    Quota,
    Resources,
)
from common.states import ON_NODE, TERMINAL, JobState, NodeState, check_transition
from scheduler import fairshare, gpus, liveness, placement
from scheduler.archive import JobArchive
from scheduler.dependencies import DependencyIndex
from scheduler.fairshare import FairShare
from scheduler.limits import spec_bytes
from scheduler.nodes import add, sub
from scheduler.quotas import Running
from scheduler.state.blobrefs import NamedBlobs
from scheduler.state.nodes import Nodes
from scheduler.state.records import dt

#: longer strings are rarely shared and not worth the lookup
_INTERN_MAX = 64


def share_strings(job: Job) -> None:
    """Let jobs share their many repeated strings (images, commands, env, labels).

    Batch jobs come in families that differ in an argument or two; interning what
    repeats is most of what keeps a retained job small.
    """
    intern = sys.intern
    spec = job.spec
    spec.image = intern(spec.image)
    job.name = spec.name = intern(spec.name)
    if isinstance(spec.command, list):
        spec.command = [intern(a) if len(a) <= _INTERN_MAX else a for a in spec.command]
    if spec.depends_on:
        # Thousands of jobs may each name the same thousand ids.
        spec.depends_on = [intern(d) if isinstance(d, str) else d for d in spec.depends_on]
    for k, value in spec.env.items():
        # A secret's reference stays as it is: only its name is in the spec.
        if isinstance(value, str) and len(value) <= _INTERN_MAX:
            spec.env[k] = intern(value)
    for mapping in (spec.labels, spec.constraints.labels):
        for k, v in mapping.items():
            if len(v) <= _INTERN_MAX:
                mapping[k] = intern(v)
    if job.node_id is not None:
        job.node_id = intern(job.node_id)
    if job.submitted_by is not None:
        job.submitted_by = intern(job.submitted_by)


def request_of(job: Job) -> Resources:
    r = job.spec.resources
    return Resources(cpu=r.cpu, memory_mb=r.memory_mb, gpus=r.gpus)


def estimate_of(spec: JobSpec) -> float:
    """How long a job is expected to run, in seconds: what reservations plan with."""
    return spec.expected_runtime_s or spec.timeout_s


class Lifecycle(Nodes):
    def _setup(self) -> None:
        super()._setup()
        #: jobs that have not ended
        self.jobs: dict[str, Job] = {}
        #: jobs that have ended: an index, their documents in the store
        self.archive = JobArchive()
        #: ended jobs' documents and log ends are read back from a store when needed
        #: (the service says so); without one they all stay in memory
        self.store_behind = False
        #: every job id, in submission order (ids sort by submission)
        self.ids: list[str] = []
        self.counts: dict[JobState, int] = dict.fromkeys(JobState, 0)
        #: where each queued job stands with its dependencies, kept as they end
        self.deps = DependencyIndex()
        #: submitter -> how many of its jobs are queued (the per-token queue quota)
        self.queued_by: dict[str, int] = {}
        #: submitter -> encoded spec bytes of its jobs kept (live or ended); built when
        #: first asked for, then kept up to date
        self._spec_bytes: dict[str, int] | None = None
        #: concurrency groups' limits
        self.group_limits: dict[str, int] = {}
        #: node id -> {job id: consecutive heartbeats that did not list it}
        self.missing: dict[str, dict[str, int]] = {}
        #: jobs that began a retry's backoff since the last pass (it tells them so)
        self._fresh_backoff: list[str] = []
        #: (job id, attempt) -> bytes of log stored, for attempts of live jobs and
        #: those an append asked about since
        self.log_ends: dict[tuple[str, int], int] = {}
        #: heap of (when, job id) at which a queued job's queue timeout or deadline may
        #: end it; an entry whose job moved on is dropped when it comes up
        self.queue_timers: list[tuple[float, str]] = []
        #: owners' recent use, which orders the queue within a priority (fair share)
        self.fair = FairShare(self.config.fair_share_half_life_s, now=self.clock())
        #: owner -> what its jobs on nodes take (the quotas' measure)
        self.running_by: dict[str, Running] = {}

    # --- looking jobs up -------------------------------------------------------------

    def find(self, job_id: str) -> Job | None:
        """The job, live or ended; an ended one is a decoded copy (see JobArchive)."""
        job = self.jobs.get(job_id)
        return job if job is not None else self.archive.get(job_id)

    def job(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", {"field": "id"})
        return job

    def state_of(self, job_id: str) -> JobState | None:
        job = self.jobs.get(job_id)
        if job is not None:
            return job.state
        return self.archive.state(job_id) if job_id in self.archive else None

    def submitter_of(self, job_id: str) -> str | None:
        """Who submitted the job (None: no such job, or nobody known), without reading
        an ended one's document: a submit may name a thousand of them."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job.submitted_by
        return self.archive.owner(job_id) if job_id in self.archive else None

    def _revive(self, job_id: str) -> Job | None:
        """An ended job taken back into memory to be changed."""
        job = self.jobs.get(job_id)
        if job is None:
            job = self.archive.pop(job_id)
            if job is None:
                return None
            self.ended_blobs.pop(job_id, None)
            self.jobs[job_id] = job
        return job

    def _archive(self, job: Job) -> None:
        """An ended job leaves memory but for its index entry."""
        del self.jobs[job.id]
        self.archive.put(job)
        named = NamedBlobs.of(job)
        if named is not None:
            self.ended_blobs[job.id] = named
        if self.store_behind:
            for attempt in range(1, job.attempt + 1):
                self.log_ends.pop((job.id, attempt), None)

    # --- the one place where a job changes state --------------------------------------

    def _set_state(
        self, job: Job, new: JobState, reason: str | None = None, *, hold: bool = False
    ) -> None:
        """Move a job to ``new``. ``hold``: the job leaves its node without word from its
        agent (cancel, timeout by the scheduler), so its resources stay held until the
        agent confirms the attempt stopped."""
        old = job.state
        check_transition(old, new)
        now = self.clock()
        if old is JobState.QUEUED:
            self._dequeued(job)
        if (old in ON_NODE) != (new in ON_NODE):
            self._owner_runs(job, 1 if new in ON_NODE else -1)
        if old in ON_NODE and new not in ON_NODE:
            self._release(job, hold=hold)
        self.counts[old] -= 1
        self.counts[new] += 1
        job.state = new
        job.reason = reason
        if new is JobState.QUEUED:
            self._enqueue(job)
        elif new is JobState.RUNNING and job.started_at is None:
            job.started_at = dt(now)
        elif new in TERMINAL:
            job.finished_at = dt(now)
            if job.spec.webhook is not None:
                # Sent once this state is committed; survives a restart until delivered.
                job.webhook_pending = True
        if new in TERMINAL:
            self._dependency_ended(job, new)
        data: dict[str, Any] = {"state": new.value, "from": old.value, "attempt": job.attempt}
        if job.node_id:
            data["node_id"] = job.node_id
        if reason:
            data["reason"] = reason
        if job.exit_code is not None and new in TERMINAL:
            data["exit_code"] = job.exit_code
        self._event("job.state", job=job, data=data)

    def _owner_runs(self, job: Job, sign: int) -> None:
        """Count a job that went onto a node (1) or left it (-1) for its owner; a start
        is charged to its owner's fair-share usage at once."""
        owner = job.submitted_by or ""
        r = job.spec.resources
        running = self.running_by.get(owner)
        if running is None:
            running = self.running_by[owner] = Running()
        running.add(r.cpu, r.memory_mb, sign)
        if running.jobs <= 0:
            del self.running_by[owner]
        if sign > 0:
            self.fair.charge(owner, r.cpu * fairshare.START_CHARGE_S)
        else:
            # Stored with the job's end, so a restart keeps what its run cost.
            self._save_usage(owner, self.clock())

    def _save_usage(self, name: str, now: float) -> None:
        """Put an owner's fair-share usage (as of ``now``) in the change set."""
        self.fair.decay_to(now)
        owner = self.owners.get(name)
        used = self.fair.of(name)
        if owner is None:
            if not used:
                return
            owner = self.owners[name] = Owner(name)
        owner.usage_cpu_s = used
        owner.usage_at = now
        self.changes.owners[name] = owner

    def _enqueue(self, job: Job, *, loading: bool = False) -> None:
        """The job enters the queue (submitted, requeued, or loaded at start: then it
        keeps the time it entered, which its queue timeout counts from)."""
        owner = job.submitted_by or ""
        self.queued_by[owner] = self.queued_by.get(owner, 0) + 1
        now = self.clock()
        if not loading or job.queued_at is None:
            job.queued_at = dt(now)
        r = job.spec.resources
        req = placement.JobRequest(
            id=job.id,
            cpu=r.cpu,
            memory_mb=r.memory_mb,
            gpus=r.gpus,
            priority=job.spec.priority,
            seq=int(job.id, 16),
            constraints=job.spec.constraints.labels,
            avoid=frozenset(job.failed_nodes),
            needs=policy.needs(job.spec),
            gpu=gpus.gpu_filter(
                job.spec.constraints.gpu_model, job.spec.constraints.gpu_memory_mb
            ),
            owner=owner,
            estimate=estimate_of(job.spec),
        )
        due = self._queue_due(job)
        if due is not None:
            heapq.heappush(self.queue_timers, (due, job.id))
        if job.spec.depends_on:
            self.deps.track(job.id, job.spec.depends_on, self.state_of)
        not_before = job.not_before.timestamp() if job.not_before is not None else None
        waiting = self.deps.waits(job.id) or job.held
        self.queue.add(req, job.spec.group, not_before=not_before, now=now, waiting=waiting)
        if self.queue.backing_off(job.id):
            self._fresh_backoff.append(job.id)
        self._placement_wanted()

    def _queue_timeout_of(self, job: Job) -> float | None:
        return job.spec.queue_timeout_s or self.config.default_queue_timeout_s

    def _queue_due(self, job: Job) -> float | None:
        """When a queued job's queue timeout or deadline ends it, if ever."""
        due = [job.spec.deadline.timestamp()] if job.spec.deadline is not None else []
        timeout = self._queue_timeout_of(job)
        if timeout is not None and job.queued_at is not None:
            due.append(job.queued_at.timestamp() + timeout)
        return min(due) if due else None

    def _dequeued(self, job: Job) -> None:
        self.queue.remove(job.id)
        owner = job.submitted_by or ""
        left = self.queued_by.get(owner, 0) - 1
        if left > 0:
            self.queued_by[owner] = left
        else:
            self.queued_by.pop(owner, None)
        self.deps.untrack(job.id)

    def _dependency_ended(self, job: Job, state: JobState) -> None:
        """Tell the jobs waiting on ``job`` that it ended (its last dependents may be
        placed now; a failure fails them at the next pass, as it always has)."""
        ready = self.deps.ended(job.id, state)
        now = self.clock()
        for job_id in ready:
            waiting = self.jobs[job_id]
            if waiting.held:
                continue  # placed once it is released
            nb = waiting.not_before.timestamp() if waiting.not_before is not None else None
            self.queue.ready(job_id, waiting.spec.group, not_before=nb, now=now)
            if self.queue.backing_off(job_id):
                self._fresh_backoff.append(job_id)
        if ready or state is not JobState.COMPLETED:
            self._placement_wanted()

    def _release(self, job: Job, *, hold: bool) -> None:
        """Give back a job's resources on its node, or hold them until the agent confirms."""
        node = self.nodes.get(job.node_id or "")
        if node is None:
            return
        if job.id in node.running_jobs:
            node.running_jobs.remove(job.id)
        node.allocated = sub(node.allocated, request_of(job))
        self.missing.get(node.id, {}).pop(job.id, None)
        if hold and node.state is not NodeState.OFFLINE:
            # The container may still run; keep its resources (its GPUs too) until the
            # agent lets go.
            node.releasing.append(
                HeldAttempt(job.id, job.attempt, request_of(job), job.gpu_devices)
            )
            node.allocated = add(node.allocated, request_of(job))
        else:
            gpus.give_back(node, job.id, job.gpu_devices)
        self._refresh_node(node)
        self.changes.nodes[node.id] = node
        self._capacity_changed()

    def _archive_attempt(self, job: Job) -> None:
        job.attempts = (
            *job.attempts,
            Attempt(
                attempt=job.attempt,
                node_id=job.node_id,
                state=job.state,
                assigned_at=job.assigned_at,
                started_at=job.started_at,
                finished_at=job.finished_at or dt(self.clock()),
                exit_code=job.exit_code,
                error=job.error,
            ),
        )

    def _new_attempt(self, job: Job) -> None:
        """Fresh per-attempt fields, same id; the checkpoint is carried over."""
        job.attempt += 1
        job.node_id = None
        job.gpu_devices = ()
        job.assigned_at = job.started_at = job.finished_at = None
        job.exit_code = None
        job.error = None
        job.error_code = None
        job.progress = None
        job.usage = None
        self._set_outputs(job, None)
        job.cancelled_by = job.cancelled_at = None
        req = self.queue.get(job.id)
        if req is not None:
            req.avoid = frozenset(job.failed_nodes)

    def _retry_or_end(self, job: Job, final: JobState, why: str, *, hold: bool = False) -> None:
        """Requeue a failed attempt when retries are left and its exit code may be
        retried, else end the job in ``final``."""
        if job.error is None:
            job.error = why
        spec = job.spec
        retry = job.retries < spec.max_retries
        if retry and not liveness.retries_exit_code(
            job.exit_code, spec.retry_on_exit_codes, spec.no_retry_on_exit_codes
        ):
            retry = False
            job.error_code = "exit_code_not_retried"
            why = f"{why} (exit code {job.exit_code} is not retried by the job's rules)"
        if retry:
            attempt_state = job.state
            job.state = final  # recorded in the attempt's history as how it ended
            self._archive_attempt(job)
            job.state = attempt_state
            if job.node_id and job.node_id not in job.failed_nodes:
                job.failed_nodes = (*job.failed_nodes, job.node_id)
            job.retries += 1
            delay = liveness.retry_delay(
                job.retries,
                base_s=job.spec.retry_delay_s,
                max_s=job.spec.retry_max_delay_s,
                jitter=self.rng.random(),
            )
            job.not_before = dt(self.clock() + delay)
            self._set_state(job, JobState.QUEUED, reason=f"retry {job.retries}: {why}", hold=hold)
            self._new_attempt(job)
        else:
            self._set_state(job, final, reason=why, hold=hold)

    def _requeue_or_end(
        self, job: Job, why: str, *, hold: bool = False, avoid_node: bool = True
    ) -> None:
        """An attempt ended by a loss the job did not cause (its node went offline or was
        drained with requeue, its agent or executor lost it, it was preempted): the job
        is queued again at once with attempt + 1, up to ``max_requeues`` times, without
        spending its retries. Past them it fails, saying so. ``avoid_node``: placement
        ranks the node that lost it lower from now on."""
        if job.error is None:
            job.error = why
        if job.requeues >= job.spec.max_requeues:
            job.error_code = "requeue_limit"
            why = f"{why} (requeued {job.requeues} times already, the job's max_requeues)"
            job.error = why
            self._set_state(job, JobState.FAILED, reason=why, hold=hold)
            return
        attempt_state = job.state
        job.state = JobState.FAILED  # how the attempt ended, in its history
        self._archive_attempt(job)
        job.state = attempt_state
        if avoid_node and job.node_id and job.node_id not in job.failed_nodes:
            job.failed_nodes = (*job.failed_nodes, job.node_id)
        job.requeues += 1
        job.not_before = None
        reason = f"requeued {job.requeues}/{job.spec.max_requeues}: {why}"
        self._set_state(job, JobState.QUEUED, reason=reason, hold=hold)
        self._new_attempt(job)

    def drain(self, node_id: str, drain: bool, reason: str, *, requeue: bool = False) -> Node:
        """Drain a node (or undo it); with ``requeue`` its jobs are stopped and queued
        again elsewhere, their resources held until its agent confirms each stopped."""
        node = super().drain(node_id, drain, reason)
        if drain and requeue and node.running_jobs:
            why = f"node {node.name} was drained with requeue"
            for job_id in list(node.running_jobs):
                self._requeue_or_end(self.jobs[job_id], why, hold=True, avoid_node=False)
            self._wake_node(node.id)
        return node

    def _lose(self, job: Job, node: Node, why: str) -> None:
        job.error = why
        self._infra_failure(node)
        self._requeue_or_end(job, why)

    # --- what submitters hold --------------------------------------------------------

    def owner_status(self, name: str) -> OwnerStatus:
        """An owner's quota, what its jobs on nodes take, its queued jobs and its
        fair-share usage."""
        found = self.owners.get(name)
        running = self.running_by.get(name) or Running()
        return OwnerStatus(
            name=name,
            quota=found.quota if found is not None else Quota(),
            running_cpu=round(running.cpu, 6),
            running_memory_mb=running.memory_mb,
            running_jobs=running.jobs,
            queued_jobs=self.queued_by.get(name, 0),
            usage_cpu_s=round(self.fair.of(name), 3),
        )

    def owner_names(self) -> list[str]:
        """Every owner with a quota, usage, or jobs queued or on nodes."""
        return sorted({*self.owners, *self.fair.usage, *self.running_by, *self.queued_by})

    def spec_bytes_of(self, owner: str) -> int:
        """Encoded spec bytes of the jobs ``owner`` submitted that are still kept."""
        if self._spec_bytes is None:
            held: dict[str, int] = {}
            for job in self.jobs.values():
                who = job.submitted_by or ""
                held[who] = held.get(who, 0) + spec_bytes(job.spec)
            for job_id in self.archive:
                who_or_none, size = self.archive.owner_and_spec_bytes(job_id)
                who = who_or_none or ""
                held[who] = held.get(who, 0) + size
            self._spec_bytes = held
        return self._spec_bytes.get(owner, 0)

    def _held_spec_bytes(self, owner: str | None, size: int) -> None:
        if self._spec_bytes is None:
            return
        who = owner or ""
        left = self._spec_bytes.get(who, 0) + size
        if left > 0:
            self._spec_bytes[who] = left
        else:
            self._spec_bytes.pop(who, None)

    def _active_by_group(self, owner: str | None = None) -> dict[str, int]:
        active: dict[str, int] = {}
        for node in self.nodes.values():
            for job_id in node.running_jobs:
                job = self.jobs[job_id]
                group = job.spec.group
                if group is not None and owner in (None, job.submitted_by):
                    active[group] = active.get(group, 0) + 1
        return active

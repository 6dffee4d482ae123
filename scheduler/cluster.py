"""The scheduler's authoritative in-memory state and every change made to it.

A Cluster holds jobs, nodes and the queue. Its methods are synchronous and do no I/O:
each checks its inputs, changes the state, and records what changed (records and
events) in ``self.changes``. The service around it makes those changes durable before
anyone is told about them. The clock is injected, so liveness and timeouts are
testable without waiting.
"""

from __future__ import annotations

import bisect
import random
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from common import policy
from common.codec import to_builtins
from common.errors import (
    Conflict,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    StaleAttempt,
)
from common.models import (
    Assignment,
    Attempt,
    Command,
    HeartbeatRequest,
    HeldAttempt,
    Job,
    JobSpec,
    Node,
    Progress,
    RegisterRequest,
    Report,
    Resources,
    WebhookDelivery,
)
from common.states import ON_NODE, TERMINAL, JobState, NodeState, check_transition
from scheduler import liveness, placement, queue
from scheduler.archive import JobArchive
from scheduler.blobholds import BlobHolds
from scheduler.config import LATE_AFTER_INTERVALS, SchedulerConfig
from scheduler.dependencies import DependencyIndex
from scheduler.events import Event, EventLog
from scheduler.limits import spec_bytes
from scheduler.nodes import add, cooldown_seconds, node_status, sub
from scheduler.store.base import AuditRecord, Changes, Loaded, LogChunk, TokenRow
from scheduler.tokens import JOIN, NODE, TokenBook, new_secret, token_digest

#: an encoded job that may name a blob (an input archive, ending in ``puts":"`` like
#: outputs, or a checkpoint) contains one of these; checking two keeps loading cheap
_NAMES_BLOBS = (b'puts":"', b'"checkpoint":"')
#: the ended states a client may retry from
RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})
#: the drain reason of a node whose agent is shutting down
AGENT_SHUTTING_DOWN = "its agent is shutting down"
#: node.metrics events are recorded at most this often per node
METRICS_EVENT_INTERVAL_S = 15.0
#: a running job missing from this many consecutive heartbeats of its node is lost
MISSING_HEARTBEATS_LOST = 2
#: per-attempt log cap; past it the log ends with a marker
LOG_CAP_BYTES = 10 * 1024 * 1024
LOG_TRUNCATED_MARKER = b"\n[berth: log truncated at 10 MiB]\n"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _ts(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


def _ran_on(job: Job, attempt: int, node_id: str) -> bool:
    """Whether that attempt of the job was given to that node (it may have ended since)."""
    if attempt == job.attempt:
        return job.node_id == node_id
    return any(a.attempt == attempt and a.node_id == node_id for a in job.attempts)


def _share_strings(job: Job) -> None:
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
        spec.depends_on = [intern(d) for d in spec.depends_on]
    for mapping in (spec.env, spec.labels, spec.constraints.labels):
        for k, v in mapping.items():
            if len(v) <= _INTERN_MAX:
                mapping[k] = intern(v)
    if job.node_id is not None:
        job.node_id = intern(job.node_id)
    if job.submitted_by is not None:
        job.submitted_by = intern(job.submitted_by)


#: longer strings are rarely shared and not worth the lookup
_INTERN_MAX = 64


def _live_ram_was_binding(node: Node, ram_free_mb: int) -> bool:
    """Whether a heartbeat's free RAM can let more jobs fit than before: only when the
    node's live free RAM was below what its allocations left, and has grown."""
    if node.metrics is None:
        return True
    old = node.metrics.ram_free_mb
    allocatable = node.capacity.memory_mb - node.reserved.memory_mb - node.allocated.memory_mb
    return ram_free_mb > old and old < allocatable


def _request(job: Job) -> Resources:
    r = job.spec.resources
    return Resources(cpu=r.cpu, memory_mb=r.memory_mb, gpus=r.gpus)


class Cluster:
    def __init__(
        self,
        config: SchedulerConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.events = EventLog()
        #: events with an index below this may have been dropped by retention
        self.events_pruned_below = 0
        self.changes = Changes()
        self.booted = clock()
        #: jobs that have not ended
        self.jobs: dict[str, Job] = {}
        #: jobs that have ended, compact
        self.archive = JobArchive()
        #: every job id, in submission order (ids sort by submission)
        self.ids: list[str] = []
        #: owner -> ids of the jobs it submitted, oldest first; built when first asked
        #: for (only submit tokens list by owner), then kept up to date
        self._owned: dict[str, list[str]] | None = None
        #: queued jobs by id, with their placement request (built once per enqueue)
        self.queue: dict[str, placement.JobRequest] = {}
        self.nodes: dict[str, Node] = {}
        self.node_by_name: dict[str, str] = {}
        self.idempotency: dict[str, str] = {}
        self.tokens = TokenBook()
        self.counts: dict[JobState, int] = dict.fromkeys(JobState, 0)
        #: why each queued job waits, from the last placement pass
        self.pending_reason: dict[str, str] = {}
        #: where each queued job stands with its dependencies, kept as they end
        self.deps = DependencyIndex()
        #: submitter -> how many of its jobs are queued (the per-token queue quota)
        self.queued_by: dict[str, int] = {}
        #: submitter -> encoded spec bytes of its jobs kept (live or ended); built when
        #: first asked for, then kept up to date
        self._spec_bytes: dict[str, int] | None = None
        #: when each queued job entered the queue (for the starvation bound)
        self.queued_since: dict[str, float] = {}
        #: concurrency groups' limits
        self.group_limits: dict[str, int] = {}
        #: input archive digest -> jobs kept that name it
        self.input_refs: dict[str, int] = {}
        #: outputs or checkpoint digest -> how often jobs kept name it (a job may name
        #: one blob as both); with input_refs, what the blob sweep must not delete
        self.result_refs: dict[str, int] = {}
        #: when each node's last node.metrics event was recorded
        self._metrics_event_at: dict[str, float] = {}
        #: placement views of nodes that did not change since they were built
        self._views: dict[str, placement.NodeView] = {}
        #: node id -> {job id: consecutive heartbeats that did not list it}
        self.missing: dict[str, dict[str, int]] = {}
        #: (job id, attempt) -> bytes of log stored
        self.log_ends: dict[tuple[str, int], int] = {}
        #: who may read which blob, and what each token's blobs cost its quota
        self.blob_holds = BlobHolds()
        self._last_id = 0
        #: called when something happened that may let a queued job be placed
        self.on_placement_wanted: Callable[[], None] = lambda: None
        #: called with a node id when it has new assignments or commands
        self.on_node_changed: Callable[[str], None] = lambda node_id: None

    # --- loading ---------------------------------------------------------------------

    def load(self, loaded: Loaded) -> None:
        """Rebuild the state read from the store; allocations are recomputed from jobs."""
        self.events = EventLog(loaded.last_index, on_commit=self.events.on_commit)
        self.events_pruned_below = loaded.events_pruned_below
        self.booted = self.clock()
        for node in loaded.nodes:
            node.allocated = Resources()
            for held in node.releasing:
                node.allocated = add(node.allocated, held.resources)
            node.running_jobs = []
            self.nodes[node.id] = node
            self.node_by_name[node.name] = node.id
        for job_id, state, doc in loaded.archived:
            self.archive.put_encoded(job_id, doc)
            self.counts[state] += 1
            if _NAMES_BLOBS[0] in doc or _NAMES_BLOBS[1] in doc:
                # Decoded only when it may name a blob, so that what is counted here
                # is what forget() and release_inputs() take off again.
                ended = self.archive.get(job_id)
                if ended is not None:
                    self._count_inputs(ended)
                    self._count_results(ended, 1)
        for job in loaded.jobs:
            self._count_inputs(job)
            self._count_results(job, 1)
            _share_strings(job)
            self.jobs[job.id] = job
            self.counts[job.state] += 1
            if job.state is JobState.QUEUED:
                self._enqueue(job)
            elif job.state in ON_NODE and job.node_id in self.nodes:
                node = self.nodes[job.node_id]
                node.allocated = add(node.allocated, _request(job))
                node.running_jobs.append(job.id)
        for job_id in self.queue:
            # Only now: a job's dependencies may come after it in what was loaded.
            self._track_dependencies(self.jobs[job_id])
        self.ids = sorted([*self.jobs, *self.archive])
        if self.ids:
            self._last_id = int(self.ids[-1], 16)
        self.idempotency = dict(loaded.idempotency)
        self.group_limits = dict(loaded.groups)
        self.tokens = TokenBook(loaded.tokens)
        self.log_ends = dict(loaded.log_ends)
        self.blob_holds = BlobHolds(loaded.blob_holds)
        for node in self.nodes.values():
            self._refresh_node(node, record=False)

    def take_changes(self) -> Changes:
        changes, self.changes = self.changes, Changes()
        for job in changes.jobs.values():
            if job.state in TERMINAL and self.jobs.get(job.id) is job:
                # It will not change again: keep it compact from now on.
                del self.jobs[job.id]
                self.archive.put(job)
        return changes

    # --- recording -------------------------------------------------------------------

    def _event(
        self,
        type_: str,
        *,
        job: Job | None = None,
        node: Node | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        index = self.events.next_index()
        self.changes.events.append(
            Event(
                index=index,
                type=type_,
                ts=_dt(self.clock()),
                job_id=job.id if job else None,
                node_id=node.id if node else None,
                data=data,
            )
        )
        if job is not None:
            job.index = index
            self.changes.jobs[job.id] = job
        if node is not None:
            node.index = index
            self.changes.nodes[node.id] = node
        return index

    def _new_job_id(self) -> str:
        # Strictly increasing and time-ordered, so ids sort by submission.
        self._last_id = max(int(self.clock() * 1000) << 10, self._last_id + 1)
        return f"{self._last_id:014x}"

    # --- tokens ----------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        role: str,
        name: str,
        node_id: str | None = None,
        *,
        all_jobs: bool = False,
        by: str | None = None,
    ) -> TokenRow:
        row = TokenRow(token_digest(token), role, name, node_id, all_jobs, self._stamp(), by, None)
        self.tokens.put(row)
        self.changes.tokens.append(row)
        return row

    def authenticate(self, token: str) -> TokenRow | None:
        return self.tokens.authenticate(token)

    def create_token(
        self, role: str, name: str, *, all_jobs: bool, by: TokenRow
    ) -> tuple[TokenRow, str]:
        """A new person's token; the secret is returned once and never stored."""
        self.tokens.check_new(role, name)
        if all_jobs and role != "submit":
            raise InvalidRequest("all_jobs applies to submit tokens only", {"field": "$.all_jobs"})
        secret = new_secret()
        row = self.add_token(secret, role, name, all_jobs=all_jobs, by=by.name)
        self.audit(by, "token.create", row.id, {"name": name, "role": role, "all_jobs": all_jobs})
        return row, secret

    def revoke_token(self, token_id: str, *, by: TokenRow) -> TokenRow:
        row = self.tokens.find(token_id)
        if row.role == "admin" and row.revoked_at is None:
            admins = [r for r in self.tokens if r.role == "admin" and r.revoked_at is None]
            if len(admins) == 1:
                raise Conflict("this is the last admin token; create another one first")
        revoked = self.tokens.revoke(row, self._stamp())
        self.changes.tokens.append(revoked)
        self.audit(by, "token.revoke", row.id, {"name": row.name, "role": row.role})
        return revoked

    def rotate_join_token(self, *, by: TokenRow) -> tuple[TokenRow, str]:
        """A new join token; the old one stops working (registered nodes keep theirs)."""
        now = self._stamp()
        for row in list(self.tokens):
            if row.role == JOIN and row.revoked_at is None:
                self.changes.tokens.append(self.tokens.revoke(row, now))
        secret = new_secret()
        row = self.add_token(secret, JOIN, JOIN, by=by.name)
        self.audit(by, "token.rotate_join", row.id)
        return row, secret

    def audit(
        self,
        who: TokenRow,
        action: str,
        target: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record who did what, in the same commit as the change itself."""
        self.changes.audit.append(
            AuditRecord(self._stamp(), who.name, who.role, action, target, details)
        )

    def _stamp(self) -> str:
        # The form msgspec writes timestamps in, so stored strings sort in time order.
        return _dt(self.clock()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # --- jobs: the one place where a job changes state -----------------------------------

    def _set_state(
        self, job: Job, new: JobState, reason: str | None = None, *, hold: bool = False
    ) -> None:
        """Move a job to ``new``. ``hold``: the job leaves its node without word from its
        agent (cancel, timeout by the scheduler), so its resources stay held until the
        agent confirms the attempt stopped."""
        old = job.state
        check_transition(old, new)
        now = _dt(self.clock())
        if old is JobState.QUEUED:
            self.queue.pop(job.id, None)
            self.pending_reason.pop(job.id, None)
            self.queued_since.pop(job.id, None)
            self._dequeued(job)
        if old in ON_NODE and new not in ON_NODE:
            self._release(job, hold=hold)
        self.counts[old] -= 1
        self.counts[new] += 1
        job.state = new
        job.reason = reason
        if new is JobState.QUEUED:
            self._enqueue(job)
            self._track_dependencies(job)
            self.on_placement_wanted()
        elif new is JobState.RUNNING and job.started_at is None:
            job.started_at = now
        elif new in TERMINAL:
            job.finished_at = now
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

    def _enqueue(self, job: Job) -> None:
        owner = job.submitted_by or ""
        self.queued_by[owner] = self.queued_by.get(owner, 0) + 1
        self.queued_since[job.id] = self.clock()
        r = job.spec.resources
        self.queue[job.id] = placement.JobRequest(
            id=job.id,
            cpu=r.cpu,
            memory_mb=r.memory_mb,
            gpus=r.gpus,
            priority=job.spec.priority,
            seq=int(job.id, 16),
            constraints=job.spec.constraints.labels,
            avoid=frozenset(job.failed_nodes),
            needs=policy.needs(job.spec),
        )

    def _dequeued(self, job: Job) -> None:
        owner = job.submitted_by or ""
        left = self.queued_by.get(owner, 0) - 1
        if left > 0:
            self.queued_by[owner] = left
        else:
            self.queued_by.pop(owner, None)
        self.deps.untrack(job.id)

    def _track_dependencies(self, job: Job) -> None:
        if job.spec.depends_on:
            self.deps.track(job.id, job.spec.depends_on, self.state_of)

    def _dependency_ended(self, job: Job, state: JobState) -> None:
        """Tell the jobs waiting on ``job`` that it ended (its last dependents may be
        placed now; a failure fails them at the next pass, as it always has)."""
        ready = self.deps.ended(job.id, state)
        for job_id in ready:
            self.pending_reason.pop(job_id, None)
        if ready or state is not JobState.COMPLETED:
            self.on_placement_wanted()

    def spec_bytes_of(self, owner: str) -> int:
        """Encoded spec bytes of the jobs ``owner`` submitted that are still kept."""
        if self._spec_bytes is None:
            held: dict[str, int] = {}
            for job in self.jobs.values():
                who = job.submitted_by or ""
                held[who] = held.get(who, 0) + spec_bytes(job.spec)
            for job_id in self.archive:
                # Read from the encoded document, without decoding the job.
                who_or_none, size = self.archive.owner_and_spec_bytes(job_id)
                who = who_or_none or ""
                held[who] = held.get(who, 0) + size
            self._spec_bytes = held
        return self._spec_bytes.get(owner, 0)

    def _held_spec_bytes(self, job: Job, sign: int) -> None:
        if self._spec_bytes is None:
            return
        owner = job.submitted_by or ""
        left = self._spec_bytes.get(owner, 0) + sign * spec_bytes(job.spec)
        if left > 0:
            self._spec_bytes[owner] = left
        else:
            self._spec_bytes.pop(owner, None)

    def _release(self, job: Job, *, hold: bool) -> None:
        """Give back a job's resources on its node, or hold them until the agent confirms."""
        node = self.nodes.get(job.node_id or "")
        if node is None:
            return
        if job.id in node.running_jobs:
            node.running_jobs.remove(job.id)
        node.allocated = sub(node.allocated, _request(job))
        self.missing.get(node.id, {}).pop(job.id, None)
        if hold and node.state is not NodeState.OFFLINE:
            # The container may still run; keep its resources until the agent lets go.
            node.releasing.append(HeldAttempt(job.id, job.attempt, _request(job)))
            node.allocated = add(node.allocated, _request(job))
        self._refresh_node(node)
        self.changes.nodes[node.id] = node
        self.on_placement_wanted()

    def _archive_attempt(self, job: Job) -> None:
        job.attempts = (
            *job.attempts,
            Attempt(
                attempt=job.attempt,
                node_id=job.node_id,
                state=job.state,
                assigned_at=job.assigned_at,
                started_at=job.started_at,
                finished_at=job.finished_at or _dt(self.clock()),
                exit_code=job.exit_code,
                error=job.error,
            ),
        )

    def submit(
        self, spec: JobSpec, *, submitted_by: str, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Queue a new job; with a known idempotency key return the earlier job instead."""
        if idempotency_key is not None:
            scoped = f"{submitted_by}:{idempotency_key}"
            earlier = self.idempotency.get(scoped)
            if earlier is not None and (found := self.find(earlier)) is not None:
                return found, False
        self.check_spec(spec)
        # The first job to name a group may set its limit; the admin route changes it.
        if (
            spec.group is not None
            and spec.group_max_concurrent is not None
            and spec.group not in self.group_limits
        ):
            self.set_group_limit(spec.group, spec.group_max_concurrent)
        job = Job(
            id=self._new_job_id(),
            name=spec.name,
            state=JobState.QUEUED,
            spec=spec,
            created_at=_dt(self.clock()),
            submitted_by=submitted_by,
        )
        _share_strings(job)
        self._count_inputs(job)
        self.jobs[job.id] = job
        self.ids.append(job.id)
        if self._owned is not None:
            self._owned.setdefault(submitted_by, []).append(job.id)
        self.counts[JobState.QUEUED] += 1
        self._enqueue(job)
        self._track_dependencies(job)
        self._held_spec_bytes(job, 1)
        if idempotency_key is not None:
            self.idempotency[scoped] = job.id
            self.changes.idempotency.append((scoped, job.id))
        self._event("job.created", job=job, data={"name": job.name, "image": spec.image})
        self.on_placement_wanted()
        return job, True

    def check_spec(self, spec: JobSpec) -> None:
        """What a spec's own validation cannot know: the jobs it depends on exist; and
        what spans several of its items: no two mounts share a target.

        A job may depend only on jobs that exist when it is submitted, so the
        dependency graph never has a cycle.
        """
        for i, dep in enumerate(spec.depends_on):
            if self.state_of(dep) is None:
                raise InvalidRequest(
                    f"depends_on names no job {dep!r}", {"field": f"$.depends_on[{i}]"}
                )
        targets: set[str] = set()
        for i, mount in enumerate(spec.mounts):
            target = policy.clean_path(mount.target)
            if target in targets:
                raise InvalidRequest(
                    f"mounts[{i}]: another mount already has the target {target}",
                    {"field": f"$.mounts[{i}].target"},
                )
            targets.add(target)

    def set_group_limit(self, group: str, max_concurrent: int) -> None:
        self.group_limits[group] = max_concurrent
        self.changes.groups[group] = max_concurrent
        self.on_placement_wanted()

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

    def find(self, job_id: str) -> Job | None:
        """The job, live or ended; an ended one is a decoded copy."""
        job = self.jobs.get(job_id)
        return job if job is not None else self.archive.get(job_id)

    def job(self, job_id: str) -> Job:
        job = self.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", {"field": "id"})
        return job

    def cancel(self, job_id: str, *, by: str) -> Job:
        job = self.job(job_id)
        if job.state in TERMINAL:
            raise Conflict(f"job {job_id} already ended {job.state.value}", {"state": job.state})
        node_id = job.node_id
        job.error = f"cancelled by {by}"
        job.cancelled_by = by
        job.cancelled_at = _dt(self.clock())
        self._set_state(job, JobState.CANCELLED, reason=f"cancelled by {by}", hold=True)
        if node_id:
            self.on_node_changed(node_id)
        return job

    def retry(self, job_id: str, *, by: str) -> Job:
        """Run an ended job again: same id, attempt + 1, its history kept."""
        job = self.jobs.get(job_id)
        if job is None:
            if job_id not in self.archive:
                raise NotFound(f"no job {job_id!r}", {"field": "id"})
            state = self.archive.state(job_id)
            check_transition(state, JobState.QUEUED)
            revived = self.archive.pop(job_id)
            assert revived is not None
            job = revived
            self.jobs[job.id] = job
        if job.state not in RETRYABLE:
            raise IllegalTransition(job.state.value, JobState.QUEUED.value)
        self._archive_attempt(job)
        self._set_state(job, JobState.QUEUED, reason=f"retried by {by}")
        self._new_attempt(job)
        return job

    def _new_attempt(self, job: Job) -> None:
        """Fresh per-attempt fields, same id; the checkpoint is carried over."""
        job.attempt += 1
        job.node_id = None
        job.assigned_at = job.started_at = job.finished_at = None
        job.exit_code = None
        job.error = None
        job.progress = None
        job.usage = None
        self._set_outputs(job, None)
        job.cancelled_by = job.cancelled_at = None
        req = self.queue.get(job.id)
        if req is not None:
            req.avoid = frozenset(job.failed_nodes)

    def pause(self, job_id: str, *, by: str) -> Job:
        """Stop a running job where it is; its resources stay reserved.

        Paused time counts toward the job's timeout: timeout_s bounds how long a job
        holds its node's resources, and a paused job still holds them.
        """
        job = self.job(job_id)
        self._set_state(job, JobState.PAUSED, reason=f"paused by {by}")
        if job.node_id:
            self.on_node_changed(job.node_id)
        return job

    def resume(self, job_id: str, *, by: str) -> Job:
        job = self.job(job_id)
        if job.state is not JobState.PAUSED:
            raise Conflict(f"job {job_id} is {job.state.value}, not paused", {"state": job.state})
        self._set_state(job, JobState.RUNNING, reason=None)
        if job.node_id:
            self.on_node_changed(job.node_id)
        return job

    def iter_jobs(
        self, state: JobState | None, before: str | None, owner: str | None = None
    ) -> Iterator[Job]:
        """Jobs newest first, optionally of one state and one owner, with ids below
        ``before``."""
        ids = self.ids if owner is None else self._ids_of(owner)
        end = bisect.bisect_left(ids, before) if before is not None else len(ids)
        for i in range(end - 1, -1, -1):
            job_id = ids[i]
            job = self.jobs.get(job_id)
            if job is not None:
                if state is None or job.state is state:
                    yield job
            elif job_id in self.archive and (state is None or self.archive.state(job_id) is state):
                ended = self.archive.get(job_id)
                if ended is not None:
                    yield ended

    def _ids_of(self, owner: str) -> list[str]:
        if self._owned is None:
            owned: dict[str, list[str]] = {}
            for job_id in self.ids:
                live = self.jobs.get(job_id)
                if live is not None:
                    who = live.submitted_by
                elif job_id in self.archive:
                    # One field read from the encoded document: no decode of every
                    # ended job when the index is first built.
                    who = self.archive.owner(job_id)
                else:
                    continue
                if who is not None:
                    owned.setdefault(who, []).append(job_id)
            self._owned = owned
        # Ids of deleted jobs may linger here; iter_jobs skips what it cannot find.
        return self._owned.get(owner, [])

    # --- nodes -----------------------------------------------------------------------

    def node(self, node_id: str) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}", {"field": "node_id"})
        return node

    def register(self, req: RegisterRequest, *, replace: bool = False) -> tuple[Node, str]:
        """Register an agent and return its node and node token.

        A new name gets a new node and token. A registered name keeps its node id, but
        only for the agent that proves it is that node by sending its node token (it
        keeps that token, so a retried request cannot lock it out), or with ``replace``
        (an admin: a new token, and the node's old ones stop working). The join token
        alone never takes over a node: the name is refused with 409.
        """
        now = self.clock()
        node_id = self.node_by_name.get(req.name)
        token = secrets.token_urlsafe(32)
        kept = False
        if node_id is None:
            node = Node(
                id="n" + secrets.token_hex(7),
                name=req.name,
                state=NodeState.IDLE,
                capacity=req.capacity,
                registered_at=_dt(now),
            )
            self.nodes[node.id] = node
            self.node_by_name[node.name] = node.id
            fresh = True
        else:
            node = self.nodes[node_id]
            if req.node_token is not None and self.tokens.proves_node(req.node_token, node.id):
                token, kept = req.node_token, True
            elif not replace:
                raise Conflict(
                    f"node {req.name!r} is already registered and this request does not "
                    "carry its node token (its agent keeps it in its state dir); if that "
                    f"agent is gone for good, an admin runs `berth node forget {req.name}` "
                    "and this agent may then register",
                    {"field": "$.node_token"},
                )
            # Every other token of the node stops working.
            for row in self.tokens.of_node(node.id):
                if not (kept and row.digest == token_digest(token)):
                    self.tokens.drop(row.digest)
                    self.changes.revoked_tokens.append(row.digest)
            fresh = False
        node.hostname = req.hostname
        node.labels = dict(req.labels)
        node.capacity = req.capacity
        node.reserved = req.reserved
        node.max_parallel = req.max_parallel
        node.executor = req.executor
        node.version = req.version
        node.allow = list(req.allow)
        node.last_heartbeat_at = _dt(now)
        node.executor_error = None
        if node.draining and node.drain_reason == AGENT_SHUTTING_DOWN:
            # The agent that was shutting down is back.
            node.draining = False
            node.drain_reason = None
        if not kept:
            self.add_token(token, NODE, f"node:{node.name}", node.id)
        self._event(
            "node.registered",
            node=node,
            data={"name": node.name, "new": fresh, "executor": node.executor},
        )
        self._refresh_node(node, offline_reason=None)
        self.on_placement_wanted()
        return node, token

    def _refresh_node(
        self, node: Node, *, offline_reason: str | bool | None = False, record: bool = True
    ) -> None:
        """Recompute a node's state; record a node.state event when it changed.

        ``offline_reason``: False keeps the node's offline status as it is, None clears
        it (the node was heard from), a string declares it offline.
        """
        self._views.pop(node.id, None)
        now = self.clock()
        if offline_reason is False:
            offline = node.reason if node.state is NodeState.OFFLINE else None
        else:
            offline = offline_reason if isinstance(offline_reason, str) else None
        cooldown = _ts(node.cooldown_until)
        state, reason = node_status(
            offline_reason=offline,
            executor_error=node.executor_error,
            in_cooldown=cooldown is not None and cooldown > now,
            late=liveness.is_late(
                _ts(node.last_heartbeat_at),
                now,
                interval_s=self.config.heartbeat_interval_s,
                late_after=LATE_AFTER_INTERVALS,
            ),
            jobs=len(node.running_jobs),
        )
        if (state, reason) == (node.state, node.reason):
            return
        old = node.state
        node.state, node.reason = state, reason
        if record:
            data: dict[str, Any] = {"state": state.value, "from": old.value}
            if reason:
                data["reason"] = reason
            self._event("node.state", node=node, data=data)
        if old not in (NodeState.IDLE, NodeState.BUSY) and state in (
            NodeState.IDLE,
            NodeState.BUSY,
        ):
            self.on_placement_wanted()

    def drain(self, node_id: str, drain: bool, reason: str) -> Node:
        node = self.node(node_id)
        self._set_draining(node, drain, reason or None)
        return node

    def forget_node(self, node_id: str, *, force: bool) -> tuple[Node, list[str]]:
        """Remove a node and its tokens, so that its name may be registered anew (an
        admin's way out when an agent lost its state dir). A node that runs jobs is
        refused unless ``force``: then its jobs are lost, as when a node goes offline.
        Returns the node as it was and the ids of the jobs it lost."""
        node = self.node(node_id)
        on_node = [*node.running_jobs, *(h.job_id for h in node.releasing)]
        if on_node and not force:
            raise Conflict(
                f"node {node.name!r} runs {len(on_node)} jobs; drain it and wait, or "
                "forget it with force (its jobs are then lost and retried elsewhere)",
                {"field": "force", "jobs": on_node},
            )
        lost = list(node.running_jobs)
        why = f"lost: node {node.name} was forgotten by an admin"
        for job_id in lost:
            job = self.jobs[job_id]
            job.error = why
            self._retry_or_end(job, JobState.FAILED, why)
        for row in self.tokens.of_node(node.id):
            self.tokens.drop(row.digest)
            self.changes.revoked_tokens.append(row.digest)
        # Not the lost jobs' ids: node events reach every reader, and each lost job's
        # own job.state event goes only to those who may see that job.
        self._event("node.forgotten", node=node, data={"name": node.name})
        del self.nodes[node.id]
        del self.node_by_name[node.name]
        self.changes.nodes.pop(node.id, None)
        self.changes.forgotten_nodes.append(node.id)
        for per_node in (self.missing, self._metrics_event_at, self._views):
            per_node.pop(node.id, None)
        self.on_placement_wanted()
        return node, lost

    def _set_draining(self, node: Node, drain: bool, reason: str | None) -> None:
        node.draining = drain
        node.drain_reason = reason if drain else None
        self._views.pop(node.id, None)
        data = {"state": node.state.value, "draining": drain, "reason": node.drain_reason}
        self._event("node.state", node=node, data=data)
        if not drain:
            self.on_placement_wanted()

    def heartbeat(self, node_id: str, req: HeartbeatRequest) -> list[Command]:
        """Take a node's metrics and running attempts; answer with what it must stop."""
        node = self.node(node_id)
        now = self.clock()
        freed_before = len(node.running_jobs)
        node.last_heartbeat_at = _dt(now)
        if self.queue and _live_ram_was_binding(node, req.metrics.ram_free_mb):
            # More live memory may let a waiting job fit.
            self.on_placement_wanted()
        node.metrics = req.metrics
        node.executor_error = req.executor_error
        if req.draining and not node.draining:
            self._set_draining(node, True, AGENT_SHUTTING_DOWN)
        if now - self._metrics_event_at.get(node.id, 0.0) >= METRICS_EVENT_INTERVAL_S:
            self._metrics_event_at[node.id] = now
            self._event("node.metrics", node=node, data=to_builtins(req.metrics))
        commands: list[Command] = []
        listed = {(r.job_id, r.attempt) for r in req.running}
        for held in [h for h in node.releasing if (h.job_id, h.attempt) not in listed]:
            # The agent stopped what it was told to stop: the resources are free.
            self._let_go(node, held)
        paused = {(r.job_id, r.attempt) for r in req.running if r.paused}
        for job_id, attempt in listed:
            job = self.jobs.get(job_id)
            current = (
                job is not None
                and job.node_id == node.id
                and job.attempt == attempt
                and job.state in ON_NODE
            )
            if current and job is not None:
                # Level-triggered: repeated until the agent's heartbeat shows it done.
                if job.state is JobState.PAUSED and (job_id, attempt) not in paused:
                    commands.append(Command("pause", job_id, attempt, job.reason or ""))
                elif job.state is JobState.RUNNING and (job_id, attempt) in paused:
                    commands.append(Command("resume", job_id, attempt, job.reason or ""))
            if not current:
                reason = "attempt is no longer current"
                ended = self.archive.get(job_id) if job is None else job
                if (
                    ended is not None
                    and ended.state is JobState.CANCELLED
                    and ended.attempt == attempt
                ):
                    reason = ended.reason or "cancelled"
                commands.append(Command("cancel", job_id, attempt, reason))
        self._detect_lost(node, listed)
        # Metrics and the heartbeat time are not worth a disk write each time: after a
        # restart every node gets a grace anyway. State changes are recorded as events.
        self._refresh_node(node, offline_reason=None)
        if len(node.running_jobs) < freed_before:
            self.on_placement_wanted()
        return commands

    def _let_go(self, node: Node, held: HeldAttempt) -> None:
        node.releasing.remove(held)
        node.allocated = sub(node.allocated, held.resources)
        self._views.pop(node.id, None)
        self.changes.nodes[node.id] = node
        self.on_placement_wanted()

    def _detect_lost(self, node: Node, listed: set[tuple[str, int]]) -> None:
        """Running jobs the agent stopped listing are lost (it restarted without them)."""
        missing = self.missing.setdefault(node.id, {})
        for job_id in list(node.running_jobs):
            job = self.jobs[job_id]
            if job.state is JobState.ASSIGNED or (job_id, job.attempt) in listed:
                missing.pop(job_id, None)
                continue
            missing[job_id] = missing.get(job_id, 0) + 1
            if missing[job_id] >= MISSING_HEARTBEATS_LOST:
                missing.pop(job_id, None)
                self._lose(job, node, "lost: its agent no longer runs it")

    def pending_assignments(self, node_id: str, after: int) -> tuple[list[Assignment], int]:
        node = self.node(node_id)
        out = []
        top = after
        # Only what is durable: an assignment an agent started on, then lost in a crash
        # before its commit, would be handed out again as the same attempt.
        committed = self.events.committed_index
        for job_id in node.running_jobs:
            job = self.jobs[job_id]
            if job.state is JobState.ASSIGNED and after < job.index <= committed:
                out.append(Assignment(job.id, job.attempt, job.spec, job.checkpoint))
                top = max(top, job.index)
        return out, max(top, after)

    # --- reports from agents ---------------------------------------------------------

    def _current(self, node: Node, job_id: str, attempt: int) -> Job:
        """The job a report is about, if that attempt is current on that node (fencing)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise StaleAttempt(f"no job {job_id!r}", {"command": "cancel"})
        if job.node_id != node.id or job.attempt != attempt or job.state not in ON_NODE:
            raise StaleAttempt(
                f"attempt {attempt} of job {job_id} is not current on this node",
                {"command": "cancel", "current_attempt": job.attempt, "state": job.state},
            )
        return job

    def report(self, node_id: str, job_id: str, rep: Report) -> Job:
        node = self.node(node_id)
        held = next(
            (h for h in node.releasing if (h.job_id, h.attempt) == (job_id, rep.attempt)), None
        )
        if held is not None and rep.state not in (None, "running"):
            # The end of an attempt the scheduler had already let go of.
            self._let_go(node, held)
            ended = self.find(job_id)
            if ended is not None:
                if rep.outputs is not None and ended.attempt == rep.attempt:
                    # What a cancelled job left in /workspace/out is still its output.
                    live = self.jobs.get(job_id) or self.archive.pop(job_id)
                    assert live is not None
                    self.jobs[job_id] = live
                    self._set_outputs(live, rep.outputs)
                    self.changes.jobs[job_id] = live
                    return live
                return ended
        job = self._current(node, job_id, rep.attempt)
        if rep.usage is not None:
            job.usage = rep.usage
        if rep.checkpoint is not None:
            self._take_checkpoint(job, rep.attempt, rep.checkpoint)
        if rep.outputs is not None:
            self._set_outputs(job, rep.outputs)
        if rep.progress is not None:
            job.progress = rep.progress
            if rep.state is None:
                self._event(
                    "job.progress",
                    job=job,
                    data={"percent": rep.progress.percent, "message": rep.progress.message},
                )
        if rep.state is None:
            # Usage alone is not written to disk: it goes with the job's next change.
            return job
        if rep.state == "running":
            if job.state is JobState.ASSIGNED:
                self._set_state(job, JobState.RUNNING)
            return job
        if job.state is JobState.ASSIGNED and rep.state == "completed":
            # It ran, even if too briefly for its running report to come first.
            self._set_state(job, JobState.RUNNING)
        job.exit_code = rep.exit_code
        job.error = rep.error
        if rep.state == "completed":
            self._healthy_run(node)
            if job.progress is not None:
                job.progress = Progress(100.0, job.progress.message)
            self._set_state(job, JobState.COMPLETED)
        elif rep.state == "cancelled":
            self._set_state(job, JobState.CANCELLED, reason=rep.error or "cancelled by its agent")
        else:
            if rep.infra_failure:
                self._infra_failure(node)
            else:
                self._healthy_run(node)
            final = JobState.TIMED_OUT if rep.state == "timed_out" else JobState.FAILED
            why = rep.error or (
                "timed out" if final is JobState.TIMED_OUT else f"exit code {rep.exit_code}"
            )
            if rep.oom_killed:
                why = rep.error or "out of memory"
            self._retry_or_end(job, final, why)
        return job

    def check_checkpoint(self, node_id: str, job_id: str, attempt: int) -> Job:
        """The job, if that attempt may write its checkpoint (see record_checkpoint)."""
        node = self.node(node_id)
        job = self.find(job_id)
        if job is None or not _ran_on(job, attempt, node.id):
            raise StaleAttempt(f"attempt {attempt} of job {job_id} did not run on this node")
        if attempt < job.checkpoint_attempt:
            raise StaleAttempt(f"a later attempt of job {job_id} has written a checkpoint")
        return job

    def record_checkpoint(self, node_id: str, job_id: str, attempt: int, digest: str) -> Job:
        """Keep a checkpoint an attempt uploaded, for the job's next attempt.

        Accepted also from an attempt that is no longer current (cancelled, or lost while
        its agent could still be reached), as long as no later attempt wrote one.
        """
        self.check_checkpoint(node_id, job_id, attempt)
        live = self.jobs.get(job_id)
        if live is None:
            # An ended job: its checkpoint matters only to a retry, but keep it.
            revived = self.archive.pop(job_id)
            assert revived is not None
            live = self.jobs[job_id] = revived
        self._take_checkpoint(live, attempt, digest)
        return live

    def _take_checkpoint(self, job: Job, attempt: int, digest: str) -> None:
        # The checkpoint it replaces is no longer named (the blob sweep deletes it).
        self._result_ref(job.checkpoint, -1)
        self._result_ref(digest, 1)
        job.checkpoint = digest
        job.checkpoint_attempt = attempt
        self._owner_holds(job, digest)
        self._event("job.checkpoint", job=job, data={"checkpoint": digest, "attempt": attempt})

    def _retry_or_end(self, job: Job, final: JobState, why: str, *, hold: bool = False) -> None:
        """Requeue a failed attempt when retries are left, else end the job in ``final``."""
        if job.error is None:
            job.error = why
        if job.retries < job.spec.max_retries:
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
            job.not_before = _dt(self.clock() + delay)
            self._set_state(job, JobState.QUEUED, reason=f"retry {job.retries}: {why}", hold=hold)
            self._new_attempt(job)
        else:
            self._set_state(job, final, reason=why, hold=hold)

    def _lose(self, job: Job, node: Node, why: str) -> None:
        job.error = why
        self._infra_failure(node)
        self._retry_or_end(job, JobState.FAILED, why)

    def _healthy_run(self, node: Node) -> None:
        if node.infra_failures or node.cooldown_until is not None:
            node.infra_failures = 0
            node.cooldown_until = None
            self._refresh_node(node)
            self.changes.nodes[node.id] = node

    def _infra_failure(self, node: Node) -> None:
        node.infra_failures += 1
        seconds = cooldown_seconds(
            node.infra_failures,
            threshold=self.config.cooldown_threshold,
            base_s=self.config.cooldown_base_s,
            max_s=self.config.cooldown_max_s,
        )
        if seconds > 0:
            node.cooldown_until = _dt(self.clock() + seconds)
        self._refresh_node(node)
        self.changes.nodes[node.id] = node

    def append_log(self, node_id: str, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        """Append an attempt's log bytes at ``offset``; duplicates are dropped. Returns the end."""
        node = self.node(node_id)
        job = self.find(job_id)
        if job is None or not _ran_on(job, attempt, node.id):
            raise StaleAttempt(f"attempt {attempt} of job {job_id} did not run on this node")
        key = (job_id, attempt)
        end = self.log_ends.get(key, 0)
        if offset > end:
            raise Conflict(f"log offset {offset} is past the end {end}", {"offset": end})
        fresh = data[end - offset :]
        if not fresh or end >= LOG_CAP_BYTES + len(LOG_TRUNCATED_MARKER):
            return end
        room = LOG_CAP_BYTES - end
        if len(fresh) > room:
            fresh = fresh[: max(0, room)] + LOG_TRUNCATED_MARKER
        self.changes.logs.append(LogChunk(job_id, attempt, end, fresh))
        self.log_ends[key] = end + len(fresh)
        return end + len(fresh)

    # --- placement -------------------------------------------------------------------

    def node_view(self, node: Node) -> placement.NodeView:
        cap, res, alloc = node.capacity, node.reserved, node.allocated
        total_cpu = max(0.0, cap.cpu - res.cpu)
        total_mem = max(0, cap.memory_mb - res.memory_mb)
        return placement.NodeView(
            id=node.id,
            free_cpu=total_cpu - alloc.cpu,
            free_memory_mb=total_mem - alloc.memory_mb,
            free_gpus=cap.gpus - res.gpus - alloc.gpus,
            free_slots=node.max_parallel - len(node.running_jobs) - len(node.releasing),
            total_cpu=total_cpu,
            total_memory_mb=total_mem,
            labels=node.labels,
            healthy=node.state in (NodeState.IDLE, NodeState.BUSY),
            draining=node.draining,
            cooldown_until=_ts(node.cooldown_until),
            live_free_memory_mb=node.metrics.ram_free_mb
            if node.metrics and node.metrics.ram_total_mb
            else None,
            cpu_percent=node.metrics.cpu_percent if node.metrics else 0.0,
            allows=tuple(node.allow),
        )

    def _cached_view(self, node: Node) -> placement.NodeView:
        """The node's placement view, rebuilt only after the node changed.

        Every change to a node goes through _refresh_node (or drops the view itself),
        and reserving re-checks against a fresh view, so a stale view can cost a
        decision but never over-commit a node.
        """
        view = self._views.get(node.id)
        if view is None:
            view = self._views[node.id] = self.node_view(node)
        return view

    def forget(self, job_ids: Iterable[str]) -> list[Job]:
        """Drop ended jobs from memory (retention). Returns the jobs dropped.

        A job that is no longer ended (retried since it was picked) is kept.
        """
        gone: list[Job] = []
        for job_id in job_ids:
            if job_id not in self.archive:
                continue
            job = self.archive.pop(job_id)
            assert job is not None
            gone.append(job)
            self._count_results(job, -1)
            self._held_spec_bytes(job, -1)
            self.deps.forget(job_id)
            self.counts[job.state] -= 1
            i = bisect.bisect_left(self.ids, job_id)
            if i < len(self.ids) and self.ids[i] == job_id:
                del self.ids[i]
            for attempt in range(1, job.attempt + 1):
                self.log_ends.pop((job_id, attempt), None)
        dropped = {j.id for j in gone}
        if dropped:
            self.idempotency = {k: v for k, v in self.idempotency.items() if v not in dropped}
        return gone

    def release_inputs(self, gone: Iterable[Job]) -> list[str]:
        """Input archives no kept job names any more, once ``gone`` are deleted.

        Several jobs may share one input archive, so it goes with the last of them.
        """
        free = []
        for job in gone:
            digest = job.spec.inputs
            if digest is None:
                continue
            left = self.input_refs.get(digest, 1) - 1
            if left > 0:
                self.input_refs[digest] = left
            else:
                self.input_refs.pop(digest, None)
                free.append(digest)
        return free

    def _count_inputs(self, job: Job) -> None:
        if job.spec.inputs is not None:
            self.input_refs[job.spec.inputs] = self.input_refs.get(job.spec.inputs, 0) + 1

    def names_blob(self, digest: str) -> bool:
        """Whether a job kept here names the blob: as its input archive, its outputs or
        its checkpoint (the blob sweep deletes only blobs this says no to)."""
        return digest in self.input_refs or digest in self.result_refs

    def _set_outputs(self, job: Job, digest: str | None) -> None:
        self._result_ref(job.outputs, -1)
        self._result_ref(digest, 1)
        job.outputs = digest
        self._owner_holds(job, digest)

    def _owner_holds(self, job: Job, digest: str | None) -> None:
        # A job's owner may fetch its outputs and checkpoint by digest too.
        if digest is not None and job.submitted_by is not None:
            self.blob_holds.hold(digest, job.submitted_by, 0, self.changes)

    def _count_results(self, job: Job, delta: int) -> None:
        self._result_ref(job.outputs, delta)
        self._result_ref(job.checkpoint, delta)

    def _result_ref(self, digest: str | None, delta: int) -> None:
        if digest is None:
            return
        left = self.result_refs.get(digest, 0) + delta
        if left > 0:
            self.result_refs[digest] = left
        else:
            self.result_refs.pop(digest, None)

    def record_delivery(self, job_id: str, delivery: WebhookDelivery, *, done: bool) -> None:
        """Note one try to deliver a job's end to its webhook; ``done`` ends the tries."""
        job = self.jobs.get(job_id)
        if job is None:
            job = self.archive.pop(job_id)
            if job is None:
                return  # deleted by retention meanwhile
            self.jobs[job_id] = job
        job.webhook_deliveries = (*job.webhook_deliveries, delivery)
        job.webhook_pending = not done
        self.changes.jobs[job.id] = job

    def submitter_of(self, job_id: str) -> str | None:
        """Who submitted the job (None: no such job, or nobody known), read without
        decoding an ended one: a submit may name a thousand of them."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job.submitted_by
        return self.archive.owner(job_id) if job_id in self.archive else None

    def state_of(self, job_id: str) -> JobState | None:
        job = self.jobs.get(job_id)
        if job is not None:
            return job.state
        return self.archive.state(job_id) if job_id in self.archive else None

    def _active_by_group(self, owner: str | None = None) -> dict[str, int]:
        active: dict[str, int] = {}
        for node in self.nodes.values():
            for job_id in node.running_jobs:
                job = self.jobs[job_id]
                group = job.spec.group
                if group is not None and owner in (None, job.submitted_by):
                    active[group] = active.get(group, 0) + 1
        return active

    def _gate(self, now: float) -> list[placement.JobRequest]:
        """The queued jobs that may be placed now, in queue order; the others get their
        pending reason, and jobs whose dependency failed for good fail."""
        # Only groups with a limit need counting, and most clusters have none.
        active = self._active_by_group() if self.group_limits else {}
        room: dict[str, int | None] = {}
        ready = []
        doomed: list[tuple[Job, str]] = []
        for job_id in self.deps.take_doomed():
            # A dependency ended without completing: judged once, against the states
            # of now (it may have been retried since), in the first pass it may run.
            job = self.jobs[job_id]
            if job.not_before is not None and job.not_before.timestamp() > now:
                self.deps.doom_later(job_id)
                continue
            failed = queue.dependencies(job.spec.depends_on, self.state_of).failed
            if failed is not None:
                doomed.append((job, failed))
        for job_id in self.deps.take_stale():
            job = self.jobs[job_id]
            self.pending_reason[job_id] = self.deps.reason(
                job_id, job.spec.depends_on, self.state_of
            )
        # A job still waiting on a dependency is not looked at: the index says when.
        waits = self.deps.waits
        candidates: Iterable[placement.JobRequest] = self.queue.values()
        if len(self.deps):
            candidates = [r for r in candidates if not waits(r.id)]
        for req in sorted(candidates, key=queue.queue_order):
            job = self.jobs[req.id]
            if job.not_before is not None and job.not_before.timestamp() > now:
                self.pending_reason[req.id] = queue.WAITING_TO_RETRY
                continue
            group = job.spec.group
            if group is not None:
                if group not in room:
                    limit = self.group_limits.get(group)
                    room[group] = queue.group_room(active.get(group, 0), limit)
                left = room[group]
                if left is not None:
                    if left <= 0:
                        limit = self.group_limits.get(group)
                        self.pending_reason[req.id] = (
                            f"{queue.GROUP_LIMIT}: group {group} runs its limit of {limit}"
                        )
                        continue
                    room[group] = left - 1
            ready.append(req)
        for job, dep in doomed:
            why = f"{queue.DEPENDENCY_FAILED}: job {dep} did not complete"
            job.error = why
            self._set_state(job, JobState.FAILED, reason=why)
        return ready

    def place(self) -> list[str]:
        """One placement pass over the queue. Returns the ids of nodes given new jobs.

        A job that has waited past the starvation bound without fitting holds a node:
        jobs behind it may not use that node until it has been placed.
        """
        now = self.clock()
        ready = self._gate(now)
        touched: list[str] = []
        if ready and self.nodes:
            starving = next((r for r in ready if self._starving(r, now)), None)
            if starving is None:
                touched = self._pass(ready, now, held=None)
            else:
                cut = ready.index(starving) + 1
                touched = self._pass(ready[:cut], now, held=None)
                held = None
                if starving.id in self.queue:
                    views = [self._cached_view(n) for n in self.nodes.values()]
                    held = queue.hold_candidate(views, starving, now)
                    if held is not None:
                        name = self.nodes[held].name
                        self.pending_reason[starving.id] = (
                            f"{queue.HELD}: node {name}, until it has room for this job"
                        )
                touched += self._pass(ready[cut:], now, held=held)
        else:
            for req in ready:
                self.pending_reason[req.id] = placement.REASON_NO_ELIGIBLE
        for job_id in self.queue:
            # Every queued job says why it waits (in memory: it changes every pass).
            self.jobs[job_id].reason = self.pending_reason.get(job_id)
        return touched

    def _starving(self, req: placement.JobRequest, now: float) -> bool:
        since = self.queued_since.get(req.id, now)
        last = self.pending_reason.get(req.id, "")
        # It did not fit in the last pass, or already holds a node (and keeps it).
        blocked = last.startswith(("no node", queue.HELD))
        return now - since > self.config.starvation_s and blocked

    def _pass(self, ready: list[placement.JobRequest], now: float, held: str | None) -> list[str]:
        views = [self._cached_view(n) for n in self.nodes.values() if n.id != held]
        result = placement.place(views, ready, now=now, strategy=self.config.strategy, rng=self.rng)
        touched: list[str] = []
        for d in result.decisions:
            job = self.jobs[d.job_id]
            node = self.nodes[d.node_id]
            # Reserve with a re-check against the node as it is now.
            if not placement.fits(self.node_view(node), self.queue[job.id], now):
                self.pending_reason[job.id] = placement.REASON_NO_FIT
                continue
            self._assign(job, node)
            touched.append(node.id)
        for job_id, why in result.unplaced.items():
            self.pending_reason[job_id] = why
        return touched

    def _assign(self, job: Job, node: Node) -> None:
        job.node_id = node.id
        job.assigned_at = _dt(self.clock())
        job.not_before = None
        node.allocated = add(node.allocated, _request(job))
        node.running_jobs.append(job.id)
        self._set_state(job, JobState.ASSIGNED)
        self._refresh_node(node)
        self.changes.nodes[node.id] = node

    # --- liveness --------------------------------------------------------------------

    def check_liveness(self) -> bool:
        """Expire silent nodes, time out jobs of silent agents, end cooldowns.

        Returns True when a retry's wait ended, so placement should run.
        """
        now = self.clock()
        cfg = self.config
        for node in self.nodes.values():
            if node.state is NodeState.OFFLINE:
                continue
            deadline = liveness.heartbeat_deadline(
                _ts(node.last_heartbeat_at),
                node.registered_at.timestamp(),
                self.booted,
                ttl_s=cfg.node_ttl_s,
                grace_s=cfg.restart_grace_s,
            )
            if now > deadline:
                self._node_offline(node, f"no heartbeat for {cfg.node_ttl_s:g}s")
            else:
                self._refresh_node(node)
        for node in self.nodes.values():
            for job_id in list(node.running_jobs):
                job = self.jobs[job_id]
                started = _ts(job.started_at) or _ts(job.assigned_at) or now
                deadline = liveness.job_deadline(started, job.spec.timeout_s, cfg.timeout_grace_s)
                # After a restart the agent gets the same grace as its node to report.
                if now > max(deadline, self.booted + cfg.restart_grace_s):
                    job.error = (
                        f"timed out after {job.spec.timeout_s:g}s (enforced by the scheduler)"
                    )
                    self._retry_or_end(job, JobState.TIMED_OUT, job.error, hold=True)
                    self.on_node_changed(node.id)
        retry_due = False
        for req in self.queue.values():
            nb = self.jobs[req.id].not_before
            if nb is not None and nb.timestamp() <= now:
                retry_due = True
                break
        return retry_due

    def _node_offline(self, node: Node, why: str) -> None:
        self._refresh_node(node, offline_reason=why)
        node.releasing = []
        lost = [self.jobs[j] for j in node.running_jobs]
        if lost:
            # Counted once per loss of the node, whatever the number of jobs it had.
            self._infra_failure(node)
        for job in lost:
            job.error = f"lost: node {node.name} went offline"
            self._retry_or_end(job, JobState.FAILED, job.error)
        node.allocated = Resources()
        self._views.pop(node.id, None)
        self.changes.nodes[node.id] = node

    # --- stats -----------------------------------------------------------------------

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

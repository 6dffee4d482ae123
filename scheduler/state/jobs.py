"""What clients do to jobs: submit, cancel, retry, pause, resume; group limits; and
retention's deletion of ended jobs."""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from common import policy
from common.errors import Conflict, IllegalTransition, InvalidRequest, NotFound
from common.models import Job, JobSpec, WebhookDelivery
from common.states import TERMINAL, JobState, check_transition
from scheduler import queue
from scheduler.arrays import ArrayEntry, group_of, task_ids
from scheduler.limits import spec_bytes
from scheduler.state.blobrefs import Gone, NamedBlobs
from scheduler.state.lifecycle import Lifecycle, share_strings
from scheduler.state.records import dt

#: the ended states a client may retry from
RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})


class Jobs(Lifecycle):
    def _setup(self) -> None:
        super()._setup()
        #: "owner:key" -> the job an idempotency key created
        self.idempotency: dict[str, str] = {}
        #: owner -> ids of the jobs it submitted, oldest first; built when first asked
        #: for (only submit tokens list by owner), then kept up to date
        self._owned: dict[str, list[str]] | None = None
        self._last_id = 0
        #: array id -> its size and shared spec (its tasks' ids follow from both; see
        #: scheduler.arrays); live arrays from load on, ended ones once asked for
        self.arrays: dict[str, ArrayEntry] = {}

    def _new_job_id(self) -> str:
        # Strictly increasing and time-ordered, so ids sort by submission.
        self._last_id = max(int(self.clock() * 1000) << 10, self._last_id + 1)
        return f"{self._last_id:014x}"

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
            created_at=dt(self.clock()),
            submitted_by=submitted_by,
        )
        share_strings(job)
        self._queue_new(job, {"name": job.name, "image": spec.image})
        if self._spec_bytes is not None:  # counted once someone asked (see spec_bytes_of)
            self._held_spec_bytes(submitted_by, spec_bytes(spec))
        if idempotency_key is not None:
            self.idempotency[scoped] = job.id
            self.changes.idempotency.append((scoped, job.id))
        return job, True

    def _queue_new(self, job: Job, data: dict[str, Any]) -> None:
        """A new job enters the state and the queue, with its job.created event."""
        self._count_job(job)
        self.jobs[job.id] = job
        self.ids.append(job.id)
        if self._owned is not None:
            self._owned.setdefault(job.submitted_by or "", []).append(job.id)
        self.counts[JobState.QUEUED] += 1
        self._enqueue(job)
        self._event("job.created", job=job, data=data)

    # --- arrays ----------------------------------------------------------------------

    def submit_array(
        self,
        spec: JobSpec,
        *,
        submitted_by: str,
        size: int = 0,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Queue ``spec.array.count`` tasks sharing one spec object; returns the first
        (whose id is the array's). With a known idempotency key, the earlier first task.

        ``size`` is the spec's encoded size: each task is a document of its own in the
        store, so each counts it toward its submitter's spec bytes.
        """
        assert spec.array is not None
        if idempotency_key is not None:
            scoped = f"{submitted_by}:{idempotency_key}"
            earlier = self.idempotency.get(scoped)
            if earlier is not None and (found := self.find(earlier)) is not None:
                return found, False
        self.check_spec(spec)
        count, limit = spec.array.count, spec.array.max_concurrent
        array_id = self._new_job_id()
        self._last_id += count - 1  # the tasks take consecutive ids
        if limit is not None:
            # One copy, shared by every task: the group holding them to the limit.
            spec = msgspec.structs.replace(spec, group=group_of(array_id))
            self.set_group_limit(group_of(array_id), limit)
        elif (
            spec.group is not None
            and spec.group_max_concurrent is not None
            and spec.group not in self.group_limits
        ):
            self.set_group_limit(spec.group, spec.group_max_concurrent)
        created_at = dt(self.clock())
        owner = sys.intern(submitted_by)
        data = {"name": spec.name, "image": spec.image, "array_id": array_id}
        first = None
        for index, job_id in enumerate(task_ids(array_id, count)):
            job = Job(
                id=job_id,
                name=spec.name,
                state=JobState.QUEUED,
                spec=spec,
                created_at=created_at,
                submitted_by=owner,
                array_id=array_id,
                array_index=index,
            )
            if first is None:
                share_strings(job)  # the spec is shared: once is enough
                first = job
            job.name = first.name
            self._queue_new(job, data)
        assert first is not None
        self.arrays[array_id] = ArrayEntry(count, spec, owner, created_at)
        if self._spec_bytes is not None:
            self._held_spec_bytes(submitted_by, size * count)
        if idempotency_key is not None:
            self.idempotency[scoped] = array_id
            self.changes.idempotency.append((scoped, array_id))
        return first, True

    def _note_array(self, job: Job) -> None:
        """Index the array a loaded task belongs to, and let it share the array's spec."""
        array_id = job.array_id
        if array_id is None:
            return
        entry = self.arrays.get(array_id)
        if entry is None:
            count = job.spec.array.count if job.spec.array is not None else 1
            owner = job.submitted_by
            self.arrays[array_id] = ArrayEntry(count, job.spec, owner, job.created_at)
        else:
            job.spec = entry.spec

    def array(self, array_id: str) -> ArrayEntry | None:
        """The array, if known: live arrays are, an ended one once its first task's
        document was read into memory (see the commands' fetch_ended)."""
        entry = self.arrays.get(array_id)
        if entry is None:
            first = self.find(array_id)
            if first is None or first.array_id != array_id or first.spec.array is None:
                return None
            entry = ArrayEntry(
                first.spec.array.count, first.spec, first.submitted_by, first.created_at
            )
            self.arrays[array_id] = entry
        return entry

    def array_task_ids(self, array_id: str, entry: ArrayEntry) -> list[str]:
        """The ids of the array's tasks that are kept (retention may delete some)."""
        jobs, archive = self.jobs, self.archive
        return [i for i in task_ids(array_id, entry.count) if i in jobs or i in archive]

    def array_counts(self, array_id: str, entry: ArrayEntry) -> dict[str, int]:
        """The array's kept tasks by state, read from memory only."""
        counts = dict.fromkeys((s.value for s in JobState), 0)
        jobs, archive = self.jobs, self.archive
        for job_id in task_ids(array_id, entry.count):
            job = jobs.get(job_id)
            if job is not None:
                counts[job.state.value] += 1
            elif job_id in archive:
                counts[archive.state(job_id).value] += 1
        return counts

    def iter_array_ids(
        self, array_id: str, entry: ArrayEntry, state: JobState | None, before: str | None
    ) -> Iterator[str]:
        """Ids of the array's tasks newest (highest index) first, as iter_ids."""
        for job_id in reversed(task_ids(array_id, entry.count)):
            if before is not None and job_id >= before:
                continue
            found = self.state_of(job_id)
            if found is not None and (state is None or found is state):
                yield job_id

    def check_spec(self, spec: JobSpec) -> None:
        """What a spec's own validation cannot know: the jobs it depends on exist; and
        what spans several of its items: no two mounts share a target.

        A job may depend only on jobs that exist when it is submitted, so the
        dependency graph never has a cycle.
        """
        if spec.expected_runtime_s is not None and spec.expected_runtime_s > spec.timeout_s:
            raise InvalidRequest(
                f"expected_runtime_s ({spec.expected_runtime_s:g}) exceeds timeout_s "
                f"({spec.timeout_s:g}): a job is stopped at its timeout",
                {"field": "$.expected_runtime_s"},
            )
        asked: dict[str, str] = {}
        for i, entry in enumerate(spec.depends_on):
            dep, when = queue.wanted(entry)
            if self.state_of(dep) is None:
                raise InvalidRequest(
                    f"depends_on names no job {dep!r}", {"field": f"$.depends_on[{i}]"}
                )
            if asked.setdefault(dep, when) != when:
                raise InvalidRequest(
                    f"depends_on names job {dep} twice, waiting for different ends",
                    {"field": f"$.depends_on[{i}]"},
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
        self._capacity_changed(group)

    def cancel(self, job_id: str, *, by: str) -> Job:
        job = self.job(job_id)
        if job.state in TERMINAL:
            raise Conflict(f"job {job_id} already ended {job.state.value}", {"state": job.state})
        node_id = job.node_id
        job.error = f"cancelled by {by}"
        job.cancelled_by = by
        job.cancelled_at = dt(self.clock())
        self._set_state(job, JobState.CANCELLED, reason=f"cancelled by {by}", hold=True)
        if node_id:
            self._wake_node(node_id)
        return job

    def retry(self, job_id: str, *, by: str) -> Job:
        """Run an ended job again: same id, attempt + 1, its history kept."""
        if job_id not in self.jobs:
            if job_id not in self.archive:
                raise NotFound(f"no job {job_id!r}", {"field": "id"})
            check_transition(self.archive.state(job_id), JobState.QUEUED)
        job = self._revive(job_id)
        assert job is not None
        if job.state not in RETRYABLE:
            raise IllegalTransition(job.state.value, JobState.QUEUED.value)
        self._archive_attempt(job)
        self._set_state(job, JobState.QUEUED, reason=f"retried by {by}")
        self._new_attempt(job)
        return job

    def pause(self, job_id: str, *, by: str) -> Job:
        """Stop a running job where it is; its resources stay reserved.

        Paused time counts toward the job's timeout: timeout_s bounds how long a job
        holds its node's resources, and a paused job still holds them.
        """
        job = self.job(job_id)
        self._set_state(job, JobState.PAUSED, reason=f"paused by {by}")
        if job.node_id:
            self._wake_node(job.node_id)
        return job

    def hold(self, job_id: str, *, by: str) -> Job:
        """Keep a queued job from being placed until it is released (a paused array's
        queued tasks); it keeps its place in the queue."""
        job = self.job(job_id)
        if job.state is not JobState.QUEUED:
            raise Conflict(f"job {job_id} is {job.state.value}, not queued", {"state": job.state})
        if not job.held:
            job.held = True
            req = self.queue.get(job.id)
            if req is not None:
                self.queue.remove(job.id)
                self.queue.add(req, job.spec.group, not_before=None, now=0.0, waiting=True)
            self._told_pending(job, f"held by {by}")
        return job

    def release(self, job_id: str, *, by: str) -> Job:
        """Let a held job be placed again (a resumed array's queued tasks)."""
        job = self.job(job_id)
        if not job.held:
            raise Conflict(f"job {job_id} is not held", {"state": job.state})
        job.held = False
        if job.state is JobState.QUEUED and not self.deps.waits(job.id):
            nb = job.not_before.timestamp() if job.not_before is not None else None
            self.queue.ready(job.id, job.spec.group, not_before=nb, now=self.clock())
            if self.queue.backing_off(job.id):
                self._fresh_backoff.append(job.id)
            self._placement_wanted()
        self._told_pending(job, f"released by {by}")
        return job

    def _told_pending(self, job: Job, why: str) -> None:
        job.reason = why
        job.pending = None
        self._event("job.pending", job=job, data={"reason": why, "pending": None})

    def resume(self, job_id: str, *, by: str) -> Job:
        job = self.job(job_id)
        if job.state is not JobState.PAUSED:
            raise Conflict(f"job {job_id} is {job.state.value}, not paused", {"state": job.state})
        self._set_state(job, JobState.RUNNING, reason=None)
        if job.node_id:
            self._wake_node(job.node_id)
        return job

    def record_delivery(self, job_id: str, delivery: WebhookDelivery, *, done: bool) -> None:
        """Note one try to deliver a job's end to its webhook; ``done`` ends the tries."""
        job = self._revive(job_id)
        if job is None:
            return  # deleted by retention meanwhile
        job.webhook_deliveries = (*job.webhook_deliveries, delivery)
        job.webhook_pending = not done
        self.changes.jobs[job.id] = job

    def forget(self, job_ids: Iterable[str]) -> list[Gone]:
        """Drop ended jobs (retention). Returns the jobs dropped.

        A job that is no longer ended (retried since it was picked) is kept. Nothing
        but the index is read: the documents stay where they are, to be deleted.
        """
        gone: list[Gone] = []
        archive = self.archive
        for job_id in job_ids:
            if job_id not in archive:
                continue
            owner, size = archive.owner_and_spec_bytes(job_id)
            self.counts[archive.state(job_id)] -= 1
            archive.drop(job_id)
            named = self.ended_blobs.pop(job_id, None) or NamedBlobs(None, None, None)
            self._count_blobs(named, -1)
            gone.append(Gone(job_id, named.inputs))
            self._held_spec_bytes(owner, -size)
            self.deps.forget(job_id)
            i = bisect.bisect_left(self.ids, job_id)
            if i < len(self.ids) and self.ids[i] == job_id:
                del self.ids[i]
        dropped = {j.id for j in gone}
        if dropped:
            self.idempotency = {k: v for k, v in self.idempotency.items() if v not in dropped}
            self.log_ends = {k: v for k, v in self.log_ends.items() if k[0] not in dropped}
        return gone

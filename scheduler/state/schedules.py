"""Periodic jobs in the state: the schedules, and each firing's run.

A firing submits its run through the same ``submit`` as any job and records, in the
same change set, the schedule's new ``last_run_at``, ``next_run_at`` and recent runs:
the service commits both in one transaction, so a crash or a failover between a
firing and its commit loses both or keeps both, and a scheduler that loads them fires
exactly the runs still due. What a firing does (start, replace, skip) is decided by
``scheduler.schedules``; this layer applies it.
"""

from __future__ import annotations

import msgspec

from common.errors import (
    BerthError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooManyRequests,
)
from common.models import Job
from common.schedule_models import (
    RECENT_RUNS,
    SCHEDULE_LABEL,
    Schedule,
    ScheduleRun,
    ScheduleSpec,
)
from common.states import TERMINAL, JobState
from scheduler import schedules
from scheduler.schedules import Action, ScheduleBook
from scheduler.state.following import Following
from scheduler.state.records import dt
from scheduler.store.base import AuditRecord, Loaded
from scheduler.tokens import TokenRow

#: the most labels a job may carry (``common.models.Labels``)
_MAX_LABELS = 64
#: the role audit records of a schedule's own firings name
FIRING_ROLE = "schedule"


class Schedules(Following):
    def _setup(self) -> None:
        super()._setup()
        #: the schedules, with a heap of their next firing times
        self.schedules = ScheduleBook()
        #: when this scheduler started to lead: firings due before it were missed
        self.led_since = self.clock()

    def load(self, loaded: Loaded) -> None:
        super().load(loaded)
        for schedule in loaded.schedules:
            self.schedules.put(schedule)

    # --- reads -----------------------------------------------------------------------

    def schedule(self, name: str) -> Schedule:
        found = self.schedules.get(name)
        if found is None:
            raise NotFound(f"no schedule {name!r}", {"field": "name"})
        return found

    def live_runs(self, schedule: Schedule) -> list[Job]:
        """The schedule's recent runs that have not ended."""
        out = []
        for run in schedule.recent_runs:
            job = self.jobs.get(run.job_id)
            if job is not None and job.state not in TERMINAL:
                out.append(job)
        return out

    # --- changes ---------------------------------------------------------------------

    def check_schedule(self, spec: ScheduleSpec) -> None:
        """What a schedule's own validation cannot know: its cron expression and
        timezone can be used, and its runs' labels fit."""
        schedules.check(spec, self.clock())
        if spec.job.array is not None:
            # A run is one job, whose end the overlap policy follows.
            raise InvalidRequest("a schedule runs one job, not an array", {"field": "$.job.array"})
        labels = {**spec.job.labels, SCHEDULE_LABEL: spec.name}
        if len(labels) > _MAX_LABELS:
            raise InvalidRequest(
                f"a run carries the label {SCHEDULE_LABEL}: the job may have at most "
                f"{_MAX_LABELS - 1} labels of its own",
                {"field": "$.job.labels"},
            )

    def put_schedule(self, spec: ScheduleSpec, *, owner: str, create: bool) -> Schedule:
        """Create a schedule (409 if the name is taken) or replace one (404 if there is
        none); a replaced schedule keeps its owner and its history."""
        self.check_schedule(spec)
        now = self.clock()
        old = self.schedules.get(spec.name)
        if create and old is not None:
            raise Conflict(f"a schedule named {spec.name!r} exists", {"field": "$.name"})
        if not create and old is None:
            raise NotFound(f"no schedule {spec.name!r}", {"field": "name"})
        following = None if spec.paused else schedules.next_of(spec, now)
        schedule = Schedule(
            name=spec.name,
            cron=spec.cron,
            timezone=spec.timezone,
            job=spec.job,
            overlap=spec.overlap,
            catch_up=spec.catch_up,
            paused=spec.paused,
            owner=old.owner if old is not None else owner,
            created_at=old.created_at if old is not None else dt(now),
            updated_at=dt(now),
            next_run_at=dt(following) if following is not None else None,
        )
        if old is not None:
            schedule.last_run_at = old.last_run_at
            schedule.last_job_id = old.last_job_id
            schedule.recent_runs = old.recent_runs
            schedule.skipped = old.skipped
            schedule.last_skipped_at = old.last_skipped_at
            schedule.last_skip_reason = old.last_skip_reason
        self._keep(schedule)
        return schedule

    def delete_schedule(self, name: str) -> Schedule:
        """Delete a schedule; its runs stay, as any job does."""
        gone = self.schedules.remove(name)
        if gone is None:
            raise NotFound(f"no schedule {name!r}", {"field": "name"})
        self.changes.schedules.pop(name, None)
        self.changes.deleted_schedules.append(name)
        return gone

    def run_schedule(self, name: str, *, by: str) -> Job:
        """Start a run now, by hand, under the schedule's overlap policy (409 when it
        forbids one while the previous run goes on); the next firing time stays."""
        schedule = self.schedule(name)
        live = self.live_runs(schedule)
        if live and schedule.overlap == "forbid":
            raise Conflict(
                f"the previous run {live[0].id} has not ended (overlap forbid)",
                {"job_id": live[0].id},
            )
        # Checked before anything changes: a refused run cancels nothing.
        self._admit_run(schedule)
        if schedule.overlap == "replace":
            self._cancel_runs(live, by)
        job = self._start_run(schedule, None)
        self._keep(schedule)
        return job

    def tick_schedules(self) -> int:
        """Fire every schedule whose time has come; returns how many runs started.

        Each firing starts at most one run, however many of its times have passed
        (a late tick, or times missed while no scheduler led), and sets the next
        firing time to the first one after now: first, so that a firing that fails
        is not tried again at once, and each schedule goes back on the heap
        whatever happens."""
        now = self.clock()
        started = 0
        for schedule in self.schedules.due(now):
            try:
                started += self._fire(schedule, now)
            finally:
                self._keep(schedule)
        return started

    def _fire(self, schedule: Schedule, now: float) -> int:
        assert schedule.next_run_at is not None
        due = schedule.next_run_at.timestamp()
        try:
            following = schedules.next_of(schedule, now)
        except BerthError:
            # Its zone left the system's tz database: it stops until it is replaced.
            following = None
        schedule.next_run_at = dt(following) if following is not None else None
        live = self.live_runs(schedule)
        decision = schedules.decide(
            overlap=schedule.overlap,
            catch_up=schedule.catch_up,
            due=due,
            led_since=self.led_since,
            live_runs=len(live),
        )
        reason = decision.reason
        if decision.action is not Action.SKIP:
            try:
                self._admit_run(schedule)
                if decision.action is Action.REPLACE:
                    self._cancel_runs(live, f"schedule {schedule.name}")
                self._start_run(schedule, due)
            except BerthError as e:
                # A run its owner could not submit now (a revoked token, a full queue,
                # a dependency retention deleted): this firing is skipped, the next
                # ones are tried.
                reason = f"the run could not be submitted: {e.message}"
        if reason is None:
            return 1
        schedule.skipped += 1
        schedule.last_skipped_at = dt(now)
        schedule.last_skip_reason = reason
        return 0

    def _cancel_runs(self, runs: list[Job], by: str) -> None:
        for job in runs:
            self.cancel(job.id, by=by)

    def _admit_run(self, schedule: Schedule) -> None:
        """Refuse a run, before anything changes, that a submit by its owner would be
        refused: the owner has no live token that may submit (revoked: its schedules
        stop starting runs), the queue is full, the owner's share of the queue is
        taken, or the spec no longer goes (a dependency that retention deleted)."""
        owner = self._owner_of(schedule)
        if owner is None or owner.role not in ("admin", "submit"):
            raise Forbidden(f"the owner {schedule.owner!r} has no live token that may submit")
        queued = self.counts[JobState.QUEUED]
        if queued >= self.config.max_queued_jobs:
            raise TooManyRequests(
                f"the queue is full ({queued} of {self.config.max_queued_jobs} jobs waiting)",
                {"queued": queued, "limit": self.config.max_queued_jobs},
                retry_after_s=10,
            )
        quota = self.config.queued_jobs_per_token
        mine = self.queued_by.get(owner.name, 0)
        if owner.role != "admin" and mine >= quota:
            raise TooManyRequests(
                f"the owner has {mine} jobs waiting in the queue, its quota of {quota}",
                {"queued": mine, "limit": quota},
                retry_after_s=10,
            )
        self.check_spec(schedule.job)

    def _owner_of(self, schedule: Schedule) -> TokenRow | None:
        """The owner's live token (names of live tokens are unique)."""
        for row in self.tokens:
            if row.name == schedule.owner and row.revoked_at is None:
                return row
        return None

    def _start_run(self, schedule: Schedule, due: float | None) -> Job:
        """Submit one run as the schedule's owner, and note it on the schedule."""
        spec = schedule.job
        spec = msgspec.structs.replace(spec, labels={**spec.labels, SCHEDULE_LABEL: schedule.name})
        job, _ = self.submit(spec, submitted_by=schedule.owner)
        now = dt(self.clock())
        self.changes.audit.append(
            AuditRecord(
                self._stamp(),
                schedule.owner,
                FIRING_ROLE,
                "job.submit",
                job.id,
                {"name": job.name, "schedule": schedule.name},
            )
        )
        schedule.last_run_at = now
        schedule.last_job_id = job.id
        run = ScheduleRun(at=now, job_id=job.id, due=dt(due) if due is not None else None)
        schedule.recent_runs = [*schedule.recent_runs, run][-RECENT_RUNS:]
        return job

    def _keep(self, schedule: Schedule) -> None:
        """Record a new or changed schedule for the commit, and its next time."""
        self.schedules.put(schedule)
        name = schedule.name
        if name in self.changes.deleted_schedules:
            self.changes.deleted_schedules.remove(name)
        self.changes.schedules[name] = schedule

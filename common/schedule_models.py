"""The records of periodic jobs (schedules): what a client sends, what it reads back.

A schedule submits a job from its ``job`` spec at each time its cron expression names
in its timezone (``scheduler.schedules`` computes the times and decides each firing).
Kept apart from ``common.models`` so that the job records stay one concern.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct, field

from common.models import Job, JobSpec

#: how many of its latest runs a schedule lists
RECENT_RUNS = 20
#: the label every run of a schedule carries, with the schedule's name as its value
SCHEDULE_LABEL = "berth.schedule"

#: a schedule's name: it is a path segment and a label value, so no slash, no space
ScheduleName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
#: five fields (minute hour day month weekday), or six with seconds last
CronText = Annotated[str, Meta(min_length=1, max_length=256)]
#: an IANA zone name such as "Europe/Berlin"
ZoneName = Annotated[str, Meta(min_length=1, max_length=64)]
#: what a firing does while the previous run has not ended
Overlap = Literal["allow", "forbid", "replace"]
#: what a start does about firings missed while no scheduler led
CatchUp = Literal["none", "one"]


class ScheduleSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """What a client sends to create (POST) or replace (PUT) a schedule."""

    name: ScheduleName
    cron: CronText
    timezone: ZoneName = "UTC"
    job: JobSpec
    overlap: Overlap = "allow"
    catch_up: CatchUp = "none"
    paused: bool = False


class ScheduleRun(Struct, kw_only=True):
    """One run a schedule started."""

    #: when it was started
    at: datetime
    job_id: str
    #: the firing time it stands for; None for a run started by hand (POST .../run)
    due: datetime | None = None


class Schedule(Struct, kw_only=True):
    """A schedule as stored and shown."""

    name: str
    cron: str
    timezone: str
    job: JobSpec
    overlap: Overlap
    catch_up: CatchUp
    paused: bool
    #: the token name that created it: every run is submitted as this owner
    owner: str
    created_at: datetime
    updated_at: datetime
    #: the next firing time; None while paused
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_job_id: str | None = None
    #: the latest runs, oldest first, at most RECENT_RUNS
    recent_runs: list[ScheduleRun] = field(default_factory=list)
    #: firings skipped (overlap forbid, or missed while no scheduler led)
    skipped: int = 0
    last_skipped_at: datetime | None = None
    last_skip_reason: str | None = None


class ScheduleList(Struct):
    schedules: list[Schedule]


class ScheduleFired(Struct):
    """What POST /api/v1/schedules/{name}/run answers: the job it started and the
    schedule as it is now."""

    job: Job
    schedule: Schedule

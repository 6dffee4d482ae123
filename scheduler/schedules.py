"""Periodic jobs, the pure part: when a schedule fires next, and what a firing does.

No I/O, no clock reads: times come in as epoch seconds. The state (``scheduler.state``)
keeps a :class:`ScheduleBook` and asks it, at each tick, which schedules are due; for
each it asks :func:`decide` what to do given the schedule's overlap and catch-up
policies and whether its previous run has ended.

Times: a cron expression of five fields (minute hour day-of-month month day-of-week),
or six with seconds as the sixth (croniter's order, ``second_at_beginning=False``),
read in the schedule's IANA timezone, so ``0 3 * * *`` in ``Europe/Berlin`` is 03:00
local time across daylight-saving changes (a time that does not exist that day fires
at the next one that does).

Missed firings: a firing due before this scheduler started to lead (``led_since``)
fell while no scheduler led (stopped, crashed, failing over). ``catch_up: one`` starts
one run for all of them; ``none`` skips them. A firing due while this scheduler leads
is never missed: a late tick still fires it, once for however many times were due.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from common.errors import InvalidRequest
from common.schedule_models import Schedule, ScheduleSpec

#: a tick wakes at least this often (seconds), whatever the next firing time is
MAX_TICK_S = 1.0
#: a cron expression must name a time within this many seconds of any moment (croniter
#: searches that far for a date such as 30 February, which never comes)
_SEARCH_LIMIT_S = 5 * 366 * 86400.0


class Action(StrEnum):
    """What one firing does."""

    #: submit a run
    START = "start"
    #: cancel the runs still going, then submit a run
    REPLACE = "replace"
    #: start nothing, record why
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: why it skips (None when it starts a run)
    reason: str | None = None


def zone(name: str, field: str = "$.timezone") -> ZoneInfo:
    """The IANA zone ``name``; 400 naming ``field`` when there is none."""
    try:
        if "\x00" in name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidRequest(
            f"unknown timezone {name!r}: give an IANA name such as UTC or Europe/Berlin",
            {"field": field},
        ) from None


def check(spec: ScheduleSpec, now: float) -> None:
    """Refuse a cron expression or timezone that cannot be used (400 naming the field):
    one croniter refuses, or one that names no time after ``now``."""
    tz = zone(spec.timezone)
    fields = spec.cron.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(spec.cron):
        raise InvalidRequest(
            f"invalid cron expression {spec.cron!r}: five fields (minute hour day month "
            "weekday), or six with seconds last",
            {"field": "$.cron"},
        )
    if next_after(spec.cron, tz, now) is None:
        raise InvalidRequest(
            f"the cron expression {spec.cron!r} names no time that comes", {"field": "$.cron"}
        )


def next_after(cron: str, tz: ZoneInfo, after: float) -> float | None:
    """The first firing time strictly after ``after`` (epoch seconds), None when the
    expression names none within a few years."""
    start = datetime.fromtimestamp(after, tz)
    try:
        it = croniter(cron, start, max_years_between_matches=5)
        at: datetime = it.get_next(datetime)
    except (CroniterError, ValueError, OverflowError):
        return None
    ts = at.timestamp()
    if ts <= after or ts - after > _SEARCH_LIMIT_S:
        return None
    return ts


def next_of(schedule: Schedule | ScheduleSpec, after: float) -> float | None:
    """``next_after`` for a schedule's own cron expression and timezone."""
    return next_after(schedule.cron, zone(schedule.timezone), after)


def decide(
    *,
    overlap: str,
    catch_up: str,
    due: float,
    led_since: float,
    live_runs: int,
) -> Decision:
    """What a firing due at ``due`` does, given the schedule's policies, when this
    scheduler started to lead, and how many of the schedule's runs have not ended."""
    if due < led_since and catch_up == "none":
        return Decision(Action.SKIP, "missed while no scheduler led (catch_up none)")
    if live_runs:
        if overlap == "forbid":
            return Decision(Action.SKIP, "the previous run has not ended (overlap forbid)")
        if overlap == "replace":
            return Decision(Action.REPLACE)
    return Decision(Action.START)


class ScheduleBook:
    """The schedules by name, and a heap of their next firing times.

    A tick asks :meth:`due` for the schedules whose time has come; it costs a look at
    the heap's top when none has. A change of a schedule (or its removal) leaves its
    old heap entry behind, recognised by its version and dropped when it comes up.
    """

    def __init__(self) -> None:
        self.by_name: dict[str, Schedule] = {}
        #: (time, name, version)
        self._heap: list[tuple[float, str, int]] = []
        self._version: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.by_name)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def get(self, name: str) -> Schedule | None:
        return self.by_name.get(name)

    def put(self, schedule: Schedule) -> None:
        """Keep ``schedule`` (new or changed) and its next firing time."""
        name = schedule.name
        self.by_name[name] = schedule
        version = self._version.get(name, 0) + 1
        self._version[name] = version
        if schedule.next_run_at is not None and not schedule.paused:
            heapq.heappush(self._heap, (schedule.next_run_at.timestamp(), name, version))

    def remove(self, name: str) -> Schedule | None:
        self._version[name] = self._version.get(name, 0) + 1
        return self.by_name.pop(name, None)

    def next_time(self) -> float | None:
        """The earliest firing time of any schedule, None when none is due ever."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Schedule]:
        """The schedules whose firing time is at or before ``now``, earliest first;
        each is taken off the heap (``put`` it back once changed)."""
        out: list[Schedule] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return out
            _, name, _ = heapq.heappop(self._heap)
            # Taken off: a second ``due`` before the schedule is put back must not
            # return it again.
            self._version[name] += 1
            out.append(self.by_name[name])

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._version.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)

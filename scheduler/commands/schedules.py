"""Commands about periodic jobs (schedules), and the leader's tick that fires them.

Each command checks, applies, commits and returns: returned means durable, raised
means nothing changed. The tick runs only while this scheduler leads (a standby never
fires); a firing's run and the schedule's new times commit together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import msgspec

from common.errors import InvalidRequest, NotFound
from common.models import Job
from common.schedule_models import Schedule, ScheduleFired, ScheduleList, ScheduleSpec
from scheduler import access
from scheduler.commands.jobs import JobCommands
from scheduler.schedules import MAX_TICK_S
from scheduler.tokens import TokenRow

log = logging.getLogger(__name__)

#: the shortest sleep of the tick (seconds): a firing time just passed is not polled
_MIN_TICK_S = 0.005


def _snapshot(schedule: Schedule) -> Schedule:
    return msgspec.structs.replace(schedule)


class ScheduleCommands(JobCommands):
    # --- the leader's tick -----------------------------------------------------------

    async def lead(self) -> None:
        # Firings due before now fell while no scheduler led: catch_up decides them.
        self.state.led_since = self.state.clock()
        self._schedules_changed = asyncio.Event()
        await super().lead()
        self._tasks.append(asyncio.create_task(self._schedule_loop(), name="berth-schedules"))

    async def _schedule_loop(self) -> None:
        """Fire what is due, then sleep until the earliest next firing time (at most
        ``MAX_TICK_S``, or until a schedule changes). Nothing due costs one look at
        the top of a heap."""
        changed = self._schedules_changed
        while True:
            try:
                book, now = self.state.schedules, self.state.clock()
                top = book.next_time()
                if top is not None and top <= now and self.leading():
                    try:
                        self.state.tick_schedules()
                    finally:
                        # What fired before a failure is committed all the same.
                        await self.commit()
                top = book.next_time()
                delay = MAX_TICK_S if top is None else top - self.state.clock()
            except Exception:
                log.exception("schedule tick failed")
                delay = MAX_TICK_S
            changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(MAX_TICK_S, max(_MIN_TICK_S, delay))):
                    await changed.wait()

    def _wake_schedules(self) -> None:
        changed = getattr(self, "_schedules_changed", None)
        if changed is not None:
            changed.set()

    # --- commands --------------------------------------------------------------------

    def _check_schedule_spec(self, who: TokenRow, spec: ScheduleSpec) -> None:
        """Everything about a schedule's job spec that a submit of it would check now,
        under the caller's token, so that a bad job is refused at once, not at its
        first firing."""
        self._check_spec(who, spec.job, "$.job")
        self.state.check_schedule(spec)

    def _visible(
        self, who: TokenRow, name: str, known: Mapping[str, Schedule] | None = None
    ) -> Schedule:
        """The schedule, if the caller may see it; 404 alike when it does not exist and
        when it is another owner's (a submit token cannot probe others' schedules)."""
        found = (self.state.schedules.by_name if known is None else known).get(name)
        if found is None or not (access.sees_all_jobs(who) or found.owner == who.name):
            raise NotFound(f"no schedule {name!r}", {"field": "name"})
        return found

    def _changeable(self, who: TokenRow, name: str) -> Schedule:
        found = self._visible(who, name)
        if who.role == "read":
            raise NotFound(f"no schedule {name!r}", {"field": "name"})
        return found

    async def create_schedule(self, spec: ScheduleSpec, who: TokenRow) -> Schedule:
        self._check_schedule_spec(who, spec)
        schedule = self.state.put_schedule(spec, owner=who.name, create=True)
        self.state.audit(who, "schedule.create", spec.name)
        shown = _snapshot(schedule)
        await self.commit()
        self._wake_schedules()
        return shown

    async def replace_schedule(self, name: str, spec: ScheduleSpec, who: TokenRow) -> Schedule:
        if spec.name != name:
            raise InvalidRequest(
                f"the body names {spec.name!r}, the path {name!r}", {"field": "$.name"}
            )
        self._changeable(who, name)
        self._check_schedule_spec(who, spec)
        schedule = self.state.put_schedule(spec, owner=who.name, create=False)
        self.state.audit(who, "schedule.update", name)
        shown = _snapshot(schedule)
        await self.commit()
        self._wake_schedules()
        return shown

    async def delete_schedule(self, name: str, who: TokenRow) -> Schedule:
        self._changeable(who, name)
        gone = self.state.delete_schedule(name)
        self.state.audit(who, "schedule.delete", name)
        await self.commit()
        return gone

    async def run_schedule(self, name: str, who: TokenRow) -> ScheduleFired:
        """Start a run now (as the schedule's owner); 409 when overlap forbids it."""
        self._changeable(who, name)
        job: Job = self.state.run_schedule(name, by=who.name)
        self.state.audit(who, "schedule.run", name, {"job_id": job.id})
        shown = ScheduleFired(
            job=msgspec.structs.replace(job), schedule=_snapshot(self.state.schedule(name))
        )
        await self.commit()
        return shown

    async def _readable(self) -> Mapping[str, Schedule]:
        """The schedules reads are answered from: memory on the leader; on a standby,
        which does not follow them, what the store holds committed."""
        if not self.leading():
            stored = await self.store.read_schedules()
            if stored is not None:
                return {s.name: s for s in stored}
        return self.state.schedules.by_name

    async def get_schedule(self, name: str, who: TokenRow) -> Schedule:
        return self._visible(who, name, await self._readable())

    async def list_schedules(self, who: TokenRow) -> ScheduleList:
        owner = access.owner_filter(who)
        known = await self._readable()
        shown = [known[n] for n in sorted(known) if owner is None or known[n].owner == owner]
        return ScheduleList(schedules=shown)

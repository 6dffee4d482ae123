"""Commands clients give about jobs: submit, act (cancel, retry, pause, resume), and
the reads that go with them (one job, blocking until it changes; a page of jobs).

Each command checks, applies, commits and returns: returned means durable, raised
means nothing changed.
"""

from __future__ import annotations

import asyncio
import math

import msgspec

from common.arrays import ArraySummary
from common.errors import BerthError, Forbidden, InvalidRequest, NotFound, TooManyRequests
from common.models import ActionResult, Job, JobFilter, JobList, JobSpec
from common.states import TERMINAL, JobState
from scheduler import access, blobholds, queue
from scheduler.arrays import GROUP_PREFIX, ArrayEntry, is_job_id
from scheduler.limits import check_spec_size
from scheduler.service import Service
from scheduler.tokens import TokenRow

ACTIONS = ("cancel", "retry", "pause", "resume")
#: the most jobs one batch action may touch
MAX_SELECTED = 10_000
#: ended jobs read from the store at a time while a filter is matched
_FILTER_CHUNK = 1000


def _snapshot(job: Job) -> Job:
    """The job as it is now: the reply shows it so even if a placement pass moves it
    before the commit returns."""
    return msgspec.structs.replace(job)


class JobCommands(Service):
    # --- admission -------------------------------------------------------------------

    def admit_jobs(self, who: TokenRow, n: int, spec_bytes: int = 0) -> None:
        """Refuse, before anything changes, ``n`` new jobs (of ``spec_bytes`` encoded
        specs together) past the queue's cap, the token's share of the queue, the
        token's stored spec bytes or its submit rate (429 with Retry-After)."""
        self.admit_queued(who, n)
        self._admit_spec_bytes(who, spec_bytes)
        self._admit_rate(who, n)

    def _admit_rate(self, who: TokenRow, n: int) -> None:
        wait = self.submit_rate.take(who.digest, n)
        if math.isinf(wait):
            raise TooManyRequests(
                f"{n} jobs at once is more than this token's burst of {self.submit_rate.burst}",
                {"limit": self.submit_rate.burst},
            )
        if wait > 0:
            raise TooManyRequests(
                "this token is creating jobs too fast",
                {"rate_per_s": self.submit_rate.rate},
                retry_after_s=max(1, int(wait + 0.999)),
            )

    def admit_queued(self, who: TokenRow, n: int) -> None:
        """Refuse ``n`` more queued jobs past the queue's cap or, but for an admin
        token, past the token's quota of queued jobs (429 with Retry-After)."""
        queued = self.state.counts[JobState.QUEUED]
        if queued + n > self.config.max_queued_jobs:
            raise TooManyRequests(
                f"the queue is full ({queued} of {self.config.max_queued_jobs} jobs waiting)",
                {"queued": queued, "limit": self.config.max_queued_jobs},
                retry_after_s=10,
            )
        if who.role == "admin":
            return
        quota = self.config.queued_jobs_per_token
        mine = self.state.queued_by.get(who.name, 0)
        if mine + n > quota:
            raise TooManyRequests(
                f"this token has {mine} jobs waiting in the queue; {n} more would pass its "
                f"quota of {quota} (--max-queued-jobs-per-token)",
                {"queued": mine, "limit": quota},
                retry_after_s=10,
            )

    def _admit_spec_bytes(self, who: TokenRow, size: int) -> None:
        if who.role == "admin":
            return
        budget = self.config.max_spec_bytes_per_token
        held = self.state.spec_bytes_of(who.name)
        if held + size > budget:
            raise TooManyRequests(
                f"this token's kept jobs hold {held} bytes of specs; {size} more would pass "
                f"its budget of {budget} (--max-spec-bytes-per-token); an ended job gives "
                "its share back when retention deletes it",
                {"spec_bytes": held, "limit": budget},
                retry_after_s=60,
            )

    def _check_spec(self, who: TokenRow, spec: JobSpec, at: str) -> int:
        """Everything about one spec that needs the state; returns its encoded size."""
        size = check_spec_size(spec, self.config.max_spec_bytes, at)
        _check_array(spec, at)
        if not access.sees_all_jobs(who):
            # Naming another's job must not tell whether it exists.
            for i, entry in enumerate(spec.depends_on):
                dep = queue.wanted(entry)[0]
                if self.state.submitter_of(dep) != who.name:
                    raise InvalidRequest(
                        f"no job {dep!r} that this token can see",
                        {"field": f"{at}.depends_on[{i}]"},
                    )
        access.check_group_limit(who, spec, self.state.group_limits, at)
        self.state.check_secret_refs(spec, who.name, at)
        # Naming another's blob must neither hand it over nor tell whether it exists.
        if (
            spec.inputs is not None
            and not blobholds.sees_every_blob(who)
            and not blobholds.may_read(self.state, who, spec.inputs)
        ):
            raise InvalidRequest(
                f"no blob {spec.inputs!r} that this token may read", {"field": f"{at}.inputs"}
            )
        try:
            self.state.check_spec(spec)
        except InvalidRequest as e:
            field = str(e.details.get("field", "$")).replace("$", at, 1)
            raise InvalidRequest(e.message, {**e.details, "field": field}) from None
        return size

    # --- submit ----------------------------------------------------------------------

    async def submit(
        self, spec: JobSpec, who: TokenRow, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Queue a job; with a key this token used before, the job it created then
        (and False)."""
        size = self._check_spec(who, spec, "$")
        if idempotency_key is not None:
            earlier = self.state.idempotency.get(f"{who.name}:{idempotency_key}")
            if earlier is not None:
                await self.fetch_ended([earlier])
        if spec.array is not None:
            return await self._submit_array(spec, who, idempotency_key, size)
        self.admit_jobs(who, 1, size)
        job, created = self.state.submit(
            spec, submitted_by=who.name, idempotency_key=idempotency_key
        )
        if created:
            self.state.audit(who, "job.submit", job.id, {"name": job.name})
        shown = _snapshot(job)
        await self.commit()
        return shown, created

    async def _submit_array(
        self, spec: JobSpec, who: TokenRow, idempotency_key: str | None, size: int
    ) -> tuple[Job, bool]:
        """Queue an array's tasks in one commit; the first task (its id is the array's).

        Each task is a queued job and a document in the store: the queue's caps and the
        token's spec bytes count every task. The submit rate counts the array as one
        request of up to a full burst, so an array may be larger than the burst.
        """
        assert spec.array is not None
        count = spec.array.count
        earlier = None
        if idempotency_key is not None:
            earlier = self.state.idempotency.get(f"{who.name}:{idempotency_key}")
        if earlier is None or self.state.find(earlier) is None:
            # A new array (a key seen before answers its array without taking more).
            self.admit_queued(who, count)
            self._admit_spec_bytes(who, size * count)
            self._admit_rate(who, min(count, self.submit_rate.burst))
        job, created = self.state.submit_array(
            spec, submitted_by=who.name, size=size, idempotency_key=idempotency_key
        )
        if created:
            self.state.audit(who, "array.submit", job.id, {"name": job.name, "count": count})
        shown = _snapshot(job)
        await self.commit()
        return shown, created

    async def submit_batch(self, specs: list[JobSpec], who: TokenRow) -> list[Job]:
        """Up to 1,000 specs, all checked before any is queued, committed together."""
        for i, spec in enumerate(specs):
            if spec.array is not None:
                raise InvalidRequest(
                    "an array is submitted alone (POST /api/v1/jobs)",
                    {"field": f"$.jobs[{i}].array"},
                )
        size = sum(self._check_spec(who, spec, f"$.jobs[{i}]") for i, spec in enumerate(specs))
        self.admit_jobs(who, len(specs), size)
        jobs = [self.state.submit(spec, submitted_by=who.name)[0] for spec in specs]
        for job in jobs:
            self.state.audit(who, "job.submit", job.id, {"name": job.name})
        shown = [_snapshot(j) for j in jobs]
        await self.commit()
        return shown

    # --- cancel, retry, pause, resume ------------------------------------------------

    def _act(self, action: str, job_id: str, who: TokenRow) -> Job:
        state = self.state
        if not access.sees_all_jobs(who):
            access.check_job(who, state.find(job_id))
        if action == "retry":
            # A retried job waits in the queue again: the same caps as a new one.
            self.admit_queued(who, 1)
        method = {
            "cancel": state.cancel,
            "retry": state.retry,
            "pause": state.pause,
            "resume": state.resume,
        }[action]
        job = method(job_id, by=who.name)
        state.audit(who, f"job.{action}", job_id)
        return job

    async def act(self, action: str, job_id: str, who: TokenRow) -> Job:
        """Cancel, retry, pause or resume one job; 409 when its state does not allow it."""
        await self.fetch_ended([job_id])
        shown = _snapshot(self._act(action, job_id, who))
        await self.commit()
        return shown

    async def act_many(
        self, action: str, ids: list[str] | None, flt: JobFilter | None, who: TokenRow
    ) -> list[ActionResult]:
        """The same action on many jobs (by ids or a filter), in one commit; each job is
        changed or refused on its own."""
        if (ids is None) == (flt is None):
            raise InvalidRequest("give either ids or filter", {"field": "$.ids"})
        selected = ids if ids is not None else await self._matching(flt, who)
        results = []
        for start in range(0, len(selected), _FILTER_CHUNK):
            # A chunk at a time: ended jobs' documents are read in, then used at once.
            chunk = selected[start : start + _FILTER_CHUNK]
            await self.fetch_ended(chunk)
            for job_id in chunk:
                try:
                    job = self._act(action, job_id, who)
                except BerthError as e:
                    results.append(ActionResult(job_id, False, error=e.to_body()["error"]))
                else:
                    results.append(ActionResult(job_id, True, state=job.state))
        await self.commit()
        return results

    async def _matching(self, flt: JobFilter | None, who: TokenRow) -> list[str]:
        assert flt is not None
        out: list[str] = []
        ids = list(self.state.iter_ids(flt.state, None, access.owner_filter(who)))
        for start in range(0, len(ids), _FILTER_CHUNK):
            chunk = ids[start : start + _FILTER_CHUNK]
            await self.fetch_ended(chunk)
            for job_id in chunk:
                job = self.state.find(job_id)
                if job is None or (flt.group is not None and job.spec.group != flt.group):
                    continue
                if any(job.spec.labels.get(k) != v for k, v in flt.labels.items()):
                    continue
                out.append(job_id)
                if len(out) > MAX_SELECTED:
                    raise InvalidRequest(
                        f"the filter matches more than {MAX_SELECTED} jobs", {"field": "$.filter"}
                    )
        return out

    # --- reads -----------------------------------------------------------------------

    async def visible_job(self, who: TokenRow, job_id: str) -> Job:
        """The job, if the caller may see it: 404 for a job that does not exist (to those
        who see every job), 403 for one that is not the caller's."""
        await self.fetch_ended([job_id])
        if access.sees_all_jobs(who):
            return self.state.shown(self.state.job(job_id))
        job = access.check_job(who, self.state.find(job_id))
        return self.state.shown(job)

    async def get_job(
        self, who: TokenRow, job_id: str, index: int | None = None, wait: float = 0.0
    ) -> Job:
        """The job; with ``index``, once it has changed past that index (or ``wait``
        seconds passed)."""
        job = await self.visible_job(who, job_id)
        if index is None:
            return job
        loop_deadline = wait
        loop = asyncio.get_running_loop().time
        # Wake on every commit; stop as soon as this job moved past the index.
        while job.index <= index and loop_deadline > 0 and not self.stopping:
            before = self.state.events.committed_index
            t0 = loop()
            await self.state.events.wait_past(before, loop_deadline)
            loop_deadline -= loop() - t0
            job = await self.visible_job(who, job_id)
        return job

    async def list_jobs(
        self,
        who: TokenRow,
        state: JobState | None,
        cursor: str | None,
        limit: int,
        index: int | None = None,
        wait: float = 0.0,
        array: str | None = None,
    ) -> JobList:
        """A page of jobs, newest first; with ``index``, once anything changed past it;
        with ``array``, only that array's tasks (highest index first)."""
        entry = await self._visible_array(who, array) if array is not None else None
        if index is not None:
            await self.state.events.wait_past(index, wait)
        ids = []
        if array is not None and entry is not None:
            found = self.state.iter_array_ids(array, entry, state, cursor)
        else:
            found = self.state.iter_ids(state, cursor, access.owner_filter(who))
        for job_id in found:
            ids.append(job_id)
            if len(ids) > limit:
                break
        await self.fetch_ended(ids)
        jobs = [self.state.shown(j) for j in map(self.state.find, ids) if j is not None]
        next_cursor = jobs[limit - 1].id if len(jobs) > limit else None
        return JobList(
            jobs=jobs[:limit], next_cursor=next_cursor, index=self.state.events.committed_index
        )

    # --- arrays ----------------------------------------------------------------------

    async def _visible_array(self, who: TokenRow, array_id: str) -> ArrayEntry:
        """The array, if the caller may see it: as for a job, 404 for one that does not
        exist (to those who see every job), 403 for one that is not the caller's."""
        entry = None
        if is_job_id(array_id):
            if array_id not in self.state.arrays:
                await self.fetch_ended([array_id])
            entry = self.state.array(array_id)
        if entry is None:
            if access.sees_all_jobs(who):
                raise NotFound(f"no array {array_id!r}", {"field": "id"})
            raise Forbidden(access.NOT_YOURS)
        if not access.sees_all_jobs(who) and entry.owner != who.name:
            raise Forbidden(access.NOT_YOURS)
        return entry

    async def get_array(self, who: TokenRow, array_id: str) -> ArraySummary:
        """The array's tasks counted by state, its spec, owner and creation time."""
        entry = await self._visible_array(who, array_id)
        counts = self.state.array_counts(array_id, entry)
        spec = entry.spec
        group = spec.group if spec.group and spec.group.startswith(GROUP_PREFIX) else None
        return ArraySummary(
            id=array_id,
            name=spec.name,
            count=entry.count,
            counts=counts,
            spec=spec,
            created_at=entry.created_at,
            owner=entry.owner,
            group=spec.group,
            max_concurrent=spec.array.max_concurrent if spec.array and group else None,
            kept=sum(counts.values()),
            index=self.state.events.committed_index,
        )

    async def act_array(
        self, action: str, array_id: str, who: TokenRow, *, failed_only: bool = True
    ) -> list[ActionResult]:
        """Cancel, retry, pause or resume an array's tasks in one commit: cancel those
        not ended, pause the running, resume the paused, retry the failed, timed out
        and cancelled (every ended one without ``failed_only``). Each task is changed
        or refused on its own; tasks the action does not apply to are not listed."""
        entry = await self._visible_array(who, array_id)
        state = self.state
        wanted = _ARRAY_TARGETS[action]
        if action == "retry" and not failed_only:
            wanted = TERMINAL
        selected = []
        for job_id in state.array_task_ids(array_id, entry):
            found = state.state_of(job_id)
            if found is not None and found in wanted:
                selected.append(job_id)
            elif action in ("pause", "resume") and found is JobState.QUEUED:
                # A paused array's queued tasks are held back, and released on resume.
                held = state.jobs[job_id].held
                if (action == "pause") != held:
                    selected.append(job_id)
        if action == "retry":
            self.admit_queued(who, len(selected))
        act = {
            "cancel": state.cancel,
            "retry": state.retry,
            "pause": state.pause,
            "resume": state.resume,
        }[action]

        def method(job_id: str, *, by: str) -> Job:
            if action in ("pause", "resume") and state.state_of(job_id) is JobState.QUEUED:
                return (state.hold if action == "pause" else state.release)(job_id, by=by)
            return act(job_id, by=by)

        results = []
        for start in range(0, len(selected), _FILTER_CHUNK):
            chunk = selected[start : start + _FILTER_CHUNK]
            if action == "retry":
                await self.fetch_ended(chunk)
            for job_id in chunk:
                try:
                    job = method(job_id, by=who.name)
                except BerthError as e:
                    results.append(ActionResult(job_id, False, error=e.to_body()["error"]))
                else:
                    results.append(ActionResult(job_id, True, state=job.state))
        done = sum(r.ok for r in results)
        state.audit(who, f"array.{action}", array_id, {"tasks": done})
        await self.commit()
        return results


#: the states of the tasks each array action applies to
_ARRAY_TARGETS: dict[str, frozenset[JobState]] = {
    "cancel": frozenset(JobState) - TERMINAL,
    "pause": frozenset({JobState.RUNNING}),
    "resume": frozenset({JobState.PAUSED}),
    "retry": frozenset({JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED}),
}


def _check_array(spec: JobSpec, at: str) -> None:
    """An array's limit makes a group of its own; no spec names such a group itself."""
    if spec.group is not None and spec.group.startswith(GROUP_PREFIX):
        raise InvalidRequest(
            f"group names starting with {GROUP_PREFIX!r} belong to job arrays",
            {"field": f"{at}.group"},
        )
    if spec.array is not None and spec.array.max_concurrent is not None and spec.group:
        raise InvalidRequest(
            "array.max_concurrent puts the tasks in a group of their own: give it or "
            "group, not both",
            {"field": f"{at}.array.max_concurrent"},
        )

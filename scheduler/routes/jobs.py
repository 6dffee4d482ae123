"""Client routes for jobs: submit, list, get (blocking), cancel."""

from __future__ import annotations

from aiohttp import web

from common import codec
from common.errors import BerthError, InvalidRequest
from common.models import (
    ActionResult,
    ActionResults,
    Job,
    JobBatch,
    JobFilter,
    JobList,
    JobSelection,
    JobSpec,
)
from common.states import JobState
from scheduler import access, blobholds
from scheduler.config import MAX_WAIT_S
from scheduler.http import json_response, query_float, query_int, read_body, require_role
from scheduler.limits import check_spec_size
from scheduler.routes import service, visible_job
from scheduler.routes.table import RouteTable
from scheduler.service import Service
from scheduler.store.base import TokenRow

routes = RouteTable()

MAX_IDEMPOTENCY_KEY = 200
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: query parameters of a page of jobs, and of a blocking read
_PAGE = (("state", "string"), ("limit", "integer"), ("cursor", "string"))
_BLOCK = (("index", "integer"), ("wait", "number"))


@routes.post(
    "/api/v1/jobs",
    summary="Submit a job (Idempotency-Key honoured)",
    body=JobSpec,
    reply=Job,
    headers=("Idempotency-Key",),
    created=True,
)
async def submit(request: web.Request) -> web.Response:
    who = require_role(request, "submit")
    key = request.headers.get("Idempotency-Key")
    # Printable ASCII only: other header bytes arrive as surrogates, which the store
    # cannot encode, and a commit that cannot be written would hold up every other.
    if key is not None and not (
        0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()
    ):
        raise InvalidRequest(
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            {"field": "Idempotency-Key"},
        )
    spec = await read_body(request, JobSpec)
    svc = service(request)
    _check_dependencies(svc, who, spec, "$")
    access.check_group_limit(who, spec, svc.cluster.group_limits, "$")
    _check_inputs(svc, who, spec, "$")
    size = check_spec_size(spec, svc.config.max_spec_bytes, "$")
    svc.admit_jobs(who, 1, size)
    job, created = svc.cluster.submit(spec, submitted_by=who.name, idempotency_key=key)
    if created:
        svc.cluster.audit(who, "job.submit", job.id, {"name": job.name})
    # The reply shows the job as submitted, even if placement moves it before the commit.
    body = codec.encode(job)
    await svc.commit()
    headers = {"Location": f"/api/v1/jobs/{job.id}"}
    return json_response(body, status=201 if created else 200, headers=headers)


@routes.post(
    "/api/v1/jobs/batch",
    summary="Submit up to 1,000 jobs, all or none",
    body=JobBatch,
    reply=JobList,
    created=True,
)
async def submit_batch(request: web.Request) -> web.Response:
    """Up to 1,000 specs, all validated before any is queued, committed together."""
    who = require_role(request, "submit")
    batch = await read_body(request, JobBatch)
    svc = service(request)
    size = 0
    for i, spec in enumerate(batch.jobs):
        size += check_spec_size(spec, svc.config.max_spec_bytes, f"$.jobs[{i}]")
        _check_dependencies(svc, who, spec, f"$.jobs[{i}]")
        access.check_group_limit(who, spec, svc.cluster.group_limits, f"$.jobs[{i}]")
        _check_inputs(svc, who, spec, f"$.jobs[{i}]")
        try:
            svc.cluster.check_spec(spec)
        except InvalidRequest as e:
            field = str(e.details.get("field", "$")).replace("$", f"$.jobs[{i}]", 1)
            raise InvalidRequest(e.message, {**e.details, "field": field}) from None
    svc.admit_jobs(who, len(batch.jobs), size)
    jobs = [svc.cluster.submit(spec, submitted_by=who.name)[0] for spec in batch.jobs]
    for job in jobs:
        svc.cluster.audit(who, "job.submit", job.id, {"name": job.name})
    body = codec.encode(JobList(jobs=jobs, next_cursor=None, index=jobs[-1].index))
    await svc.commit()
    return json_response(body, status=201)


def _check_dependencies(svc: Service, who: TokenRow, spec: JobSpec, at: str) -> None:
    """A submit token may wait only on jobs it can see: naming another's job must not
    tell whether it exists."""
    if access.sees_all_jobs(who):
        return
    for i, dep in enumerate(spec.depends_on):
        if svc.cluster.submitter_of(dep) != who.name:
            raise InvalidRequest(
                f"no job {dep!r} that this token can see", {"field": f"{at}.depends_on[{i}]"}
            )


def _check_inputs(svc: Service, who: TokenRow, spec: JobSpec, at: str) -> None:
    """A job's input archive must be a blob its submitter may read: naming another's
    blob must neither hand it over nor tell whether it exists."""
    if spec.inputs is None or blobholds.sees_every_blob(who):
        return
    if not blobholds.may_read(svc.cluster, who, spec.inputs):
        raise InvalidRequest(
            f"no blob {spec.inputs!r} that this token may read", {"field": f"{at}.inputs"}
        )


@routes.get("/api/v1/jobs", summary="List jobs, newest first", reply=JobList, query=_PAGE + _BLOCK)
async def list_jobs(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    svc = service(request)
    raw_state = request.query.get("state")
    state = None
    if raw_state:
        try:
            state = JobState(raw_state)
        except ValueError:
            allowed = ", ".join(s.value for s in JobState)
            raise InvalidRequest(f"state must be one of {allowed}", {"field": "state"}) from None
    limit = query_int(request, "limit", DEFAULT_PAGE, lo=1, hi=MAX_PAGE) or DEFAULT_PAGE
    cursor = request.query.get("cursor") or None
    index = query_int(request, "index", None)
    if index is not None:
        wait = query_float(request, "wait", 30.0, lo=0, hi=MAX_WAIT_S)
        await svc.cluster.events.wait_past(index, wait)
    jobs = []
    for job in svc.cluster.iter_jobs(state, cursor, access.owner_filter(who)):
        jobs.append(job)
        if len(jobs) > limit:
            break
    next_cursor = jobs[limit - 1].id if len(jobs) > limit else None
    current = svc.cluster.events.committed_index
    body = JobList(jobs=jobs[:limit], next_cursor=next_cursor, index=current)
    return json_response(body, headers={"X-Berth-Index": str(current)})


@routes.get(
    "/api/v1/jobs/{id}", summary="One job; blocks with index and wait", reply=Job, query=_BLOCK
)
async def get_job(request: web.Request) -> web.Response:
    require_role(request, "read", "submit")
    svc = service(request)
    job = visible_job(request, request.match_info["id"])
    index = query_int(request, "index", None)
    if index is not None:
        wait = query_float(request, "wait", 30.0, lo=0, hi=MAX_WAIT_S)
        loop_deadline = wait
        # Wake on every commit; stop as soon as this job moved past the index.
        while job.index <= index and loop_deadline > 0 and not svc.stopping:
            before = svc.cluster.events.committed_index
            t0 = request.loop.time()
            await svc.cluster.events.wait_past(before, loop_deadline)
            loop_deadline -= request.loop.time() - t0
            job = svc.cluster.job(job.id)
    return json_response(job, headers={"X-Berth-Index": str(job.index)})


ACTIONS = ("cancel", "retry", "pause", "resume")
_ACTION_PATTERN = "|".join(ACTIONS)
#: the most jobs one batch action may touch
MAX_SELECTED = 10_000


def _act(svc: Service, action: str, job_id: str, who: TokenRow) -> Job:
    cluster = svc.cluster
    if not access.sees_all_jobs(who):
        access.check_job(who, cluster.find(job_id))
    if action == "retry":
        # A retried job waits in the queue again: the same caps as a new one.
        svc.admit_queued(who, 1)
    method = {
        "cancel": cluster.cancel,
        "retry": cluster.retry,
        "pause": cluster.pause,
        "resume": cluster.resume,
    }[action]
    job = method(job_id, by=who.name)
    cluster.audit(who, f"job.{action}", job_id)
    return job


@routes.post(
    f"/api/v1/jobs/{{id}}/{{action:{_ACTION_PATTERN}}}", summary="{action} a job", reply=Job
)
async def act(request: web.Request) -> web.Response:
    """Cancel, retry, pause or resume one job; 409 when the job's state does not allow it."""
    who = require_role(request, "submit")
    svc = service(request)
    job = _act(svc, request.match_info["action"], request.match_info["id"], who)
    body = codec.encode(job)
    await svc.commit()
    return json_response(body)


@routes.post(
    f"/api/v1/jobs/{{action:{_ACTION_PATTERN}}}",
    summary="{action} many jobs",
    body=JobSelection,
    reply=ActionResults,
)
async def act_many(request: web.Request) -> web.Response:
    """The same action on many jobs (by ids or a filter), in one commit; each job is
    changed or refused on its own."""
    who = require_role(request, "submit")
    sel = await read_body(request, JobSelection)
    if (sel.ids is None) == (sel.filter is None):
        raise InvalidRequest("give either ids or filter", {"field": "$.ids"})
    svc = service(request)
    ids = sel.ids if sel.ids is not None else _matching(svc, sel.filter, who)
    action = request.match_info["action"]
    results = []
    for job_id in ids:
        try:
            job = _act(svc, action, job_id, who)
        except BerthError as e:
            results.append(ActionResult(job_id, False, error=e.to_body()["error"]))
        else:
            results.append(ActionResult(job_id, True, state=job.state))
    body = codec.encode(ActionResults(results))
    await svc.commit()
    return json_response(body)


def _matching(svc: Service, flt: JobFilter | None, who: TokenRow) -> list[str]:
    assert flt is not None
    out = []
    for job in svc.cluster.iter_jobs(flt.state, None, access.owner_filter(who)):
        if flt.group is not None and job.spec.group != flt.group:
            continue
        if any(job.spec.labels.get(k) != v for k, v in flt.labels.items()):
            continue
        out.append(job.id)
        if len(out) > MAX_SELECTED:
            raise InvalidRequest(
                f"the filter matches more than {MAX_SELECTED} jobs", {"field": "$.filter"}
            )
    return out

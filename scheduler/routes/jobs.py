"""Client routes for jobs: submit, list, get (blocking), cancel."""

from __future__ import annotations

from aiohttp import web

from common.errors import InvalidRequest
from common.models import ActionResults, Job, JobBatch, JobList, JobSelection, JobSpec
from common.states import JobState
from scheduler.commands import ACTIONS
from scheduler.config import MAX_WAIT_S
from scheduler.http import json_response, query_float, query_int, read_body, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()

MAX_IDEMPOTENCY_KEY = 200
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: query parameters of a page of jobs, and of a blocking read
_PAGE = (("state", "string"), ("limit", "integer"), ("cursor", "string"))
#: a listing's filter by job array
_ARRAY = (("array", "string"),)
_BLOCK = (("index", "integer"), ("wait", "number"))


@routes.post(
    "/api/v1/jobs",
    summary="Submit a job (Idempotency-Key honoured)",
    name="submitJob",
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
    job, created = await service(request).submit(spec, who, key)
    headers = {"Location": f"/api/v1/jobs/{job.id}"}
    return json_response(job, status=201 if created else 200, headers=headers)


@routes.post(
    "/api/v1/jobs/batch",
    summary="Submit up to 1,000 jobs, all or none",
    name="submitJobs",
    body=JobBatch,
    reply=JobList,
    created=True,
)
async def submit_batch(request: web.Request) -> web.Response:
    """Up to 1,000 specs, all validated before any is queued, committed together."""
    who = require_role(request, "submit")
    batch = await read_body(request, JobBatch)
    jobs = await service(request).submit_batch(batch.jobs, who)
    return json_response(JobList(jobs=jobs, next_cursor=None, index=jobs[-1].index), status=201)


@routes.get(
    "/api/v1/jobs",
    summary="List jobs, newest first; ?array=ID: that array's tasks",
    reply=JobList,
    query=_PAGE + _ARRAY + _BLOCK,
)
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
    wait = query_float(request, "wait", 30.0, lo=0, hi=MAX_WAIT_S) if index is not None else 0.0
    array = request.query.get("array") or None
    body = await svc.list_jobs(who, state, cursor, limit, index, wait, array)
    return json_response(body, headers={"X-Berth-Index": str(body.index)})


@routes.get(
    "/api/v1/jobs/{id}", summary="One job; blocks with index and wait", reply=Job, query=_BLOCK
)
async def get_job(request: web.Request) -> web.Response:
    who = require_role(request, "read", "submit")
    index = query_int(request, "index", None)
    wait = query_float(request, "wait", 30.0, lo=0, hi=MAX_WAIT_S) if index is not None else 0.0
    job = await service(request).get_job(who, request.match_info["id"], index, wait)
    return json_response(job, headers={"X-Berth-Index": str(job.index)})


_ACTION_PATTERN = "|".join(ACTIONS)


@routes.post(
    f"/api/v1/jobs/{{id}}/{{action:{_ACTION_PATTERN}}}", summary="{action} a job", reply=Job
)
async def act(request: web.Request) -> web.Response:
    """Cancel, retry, pause or resume one job; 409 when the job's state does not allow it."""
    who = require_role(request, "submit")
    action, job_id = request.match_info["action"], request.match_info["id"]
    return json_response(await service(request).act(action, job_id, who))


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
    action = request.match_info["action"]
    results = await service(request).act_many(action, sel.ids, sel.filter, who)
    return json_response(ActionResults(results))

"""The agent protocol: register, heartbeat, long-poll assignments, reports, log appends."""

from __future__ import annotations

from aiohttp import web

from common.errors import Forbidden, InvalidRequest, PayloadTooLarge
from common.models import (
    MAX_ATTEMPT,
    MAX_OFFSET,
    AssignmentsReply,
    HeartbeatReply,
    HeartbeatRequest,
    RegisterReply,
    RegisterRequest,
    Report,
    ReportBatch,
    ReportBatchReply,
    ReportReply,
)
from scheduler.http import json_response, principal, query_float, query_int, read_body, require_node
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()

#: largest single log append
MAX_LOG_APPEND = 4 * 1024 * 1024
#: bytes read from a log append's body at a time
LOG_READ_CHUNK = 256 * 1024


@routes.post(
    "/api/v1/nodes/register",
    summary="Register an agent (join token)",
    name="registerNode",
    body=RegisterRequest,
    reply=RegisterReply,
    bookkeeping=True,
)
async def register(request: web.Request) -> web.Response:
    role = principal(request).role
    if role not in ("join", "admin"):
        raise Forbidden("registering needs the join token")
    req = await read_body(request, RegisterRequest)
    # Only an admin may take over a registered name without the node's own token.
    return json_response(await service(request).register(req, replace=role == "admin"))


@routes.post(
    "/api/v1/nodes/{id}/heartbeat",
    summary="An agent's heartbeat",
    name="sendHeartbeat",
    body=HeartbeatRequest,
    reply=HeartbeatReply,
    bookkeeping=True,
)
async def heartbeat(request: web.Request) -> web.Response:
    node_id = request.match_info["id"]
    require_node(request, node_id)
    req = await read_body(request, HeartbeatRequest, empty_ok=True)
    return json_response(await service(request).heartbeat(node_id, req))


@routes.get(
    "/api/v1/nodes/{id}/assignments",
    summary="Long-poll an agent's assignments",
    leader=True,
    reply=AssignmentsReply,
    query=(("after", "integer"), ("wait", "number")),
)
async def assignments(request: web.Request) -> web.Response:
    node_id = request.match_info["id"]
    require_node(request, node_id)
    svc = service(request)
    after = query_int(request, "after", 0) or 0
    wait = query_float(
        request, "wait", svc.config.assignment_wait_s, lo=0, hi=svc.config.assignment_wait_s
    )
    return json_response(await svc.assignments(node_id, after, wait))


@routes.post(
    "/api/v1/nodes/{id}/jobs/{job}/report",
    summary="Report on an attempt",
    name="reportAttempt",
    body=Report,
    reply=ReportReply,
    bookkeeping=True,
)
async def report(request: web.Request) -> web.Response:
    node_id = request.match_info["id"]
    who = require_node(request, node_id)
    rep = await read_body(request, Report)
    job = await service(request).report(node_id, request.match_info["job"], rep, who)
    return json_response(ReportReply(ok=True, state=job.state))


@routes.post(
    "/api/v1/nodes/{id}/reports",
    summary="Many reports at once",
    name="reportAttempts",
    body=ReportBatch,
    reply=ReportBatchReply,
    bookkeeping=True,
)
async def report_batch(request: web.Request) -> web.Response:
    """Many reports in one request and one commit; each is accepted or refused alone."""
    node_id = request.match_info["id"]
    who = require_node(request, node_id)
    batch = await read_body(request, ReportBatch)
    return json_response(await service(request).report_batch(node_id, batch.reports, who))


@routes.post(
    "/api/v1/nodes/{id}/jobs/{job}/logs",
    summary="Append log bytes",
    name="appendLogs",
    body="binary",
    query=(("attempt", "integer"), ("offset", "integer")),
    required=("attempt", "offset"),
)
async def append_log(request: web.Request) -> web.Response:
    node_id = request.match_info["id"]
    require_node(request, node_id)
    attempt = query_int(request, "attempt", None, lo=1, hi=MAX_ATTEMPT)
    offset = query_int(request, "offset", None, lo=0, hi=MAX_OFFSET)
    if attempt is None:
        raise InvalidRequest("attempt is required", {"field": "attempt"})
    if offset is None:
        raise InvalidRequest("offset is required", {"field": "offset"})
    too_large = PayloadTooLarge(
        f"a log append may hold at most {MAX_LOG_APPEND} bytes; split it",
        {"field": "$", "max_bytes": MAX_LOG_APPEND},
    )
    if request.content_length is not None and request.content_length > MAX_LOG_APPEND:
        raise too_large
    # Read from the stream: request.read() would stop at the JSON body limit, which is
    # smaller than this route's own.
    body = bytearray()
    async for chunk in request.content.iter_chunked(LOG_READ_CHUNK):
        body += chunk
        if len(body) > MAX_LOG_APPEND:
            raise too_large
    data = bytes(body)
    end = await service(request).append_log(
        node_id, request.match_info["job"], attempt, offset, data
    )
    return json_response({"offset": end})

"""Reading a job's logs: a range, a download, a live follow (chunked text or SSE)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp_sse import sse_response

from common import codec
from common.errors import InvalidRequest
from common.models import Job
from common.states import TERMINAL
from scheduler.commands import Scheduler
from scheduler.config import KEEPALIVE_S
from scheduler.http import query_int, require_role
from scheduler.routes import service
from scheduler.routes.table import RouteTable

routes = RouteTable()

#: the most bytes one read from the store returns
READ_CHUNK = 256 * 1024
#: how long a follower waits for news before it checks again
FOLLOW_POLL_S = 15.0


def _over(job: Job, attempt: int) -> bool:
    """No more bytes can come for that attempt."""
    return attempt < job.attempt or job.state in TERMINAL


def _args(request: web.Request, job: Job) -> tuple[int, int]:
    attempt = query_int(request, "attempt", job.attempt, lo=1) or job.attempt
    if attempt > job.attempt:
        raise InvalidRequest(f"job {job.id} has no attempt {attempt} yet", {"field": "attempt"})
    header = request.headers.get("Last-Event-ID")
    if header:
        try:
            return attempt, max(0, int(header))
        except ValueError:
            raise InvalidRequest(
                "Last-Event-ID must be a byte offset", {"field": "Last-Event-ID"}
            ) from None
    return attempt, query_int(request, "offset", 0, lo=0) or 0


async def _read(svc: Scheduler, job_id: str, attempt: int, offset: int) -> bytes:
    return await svc.read_log(job_id, attempt, offset, READ_CHUNK)


async def _follow(svc: Scheduler, job_id: str, attempt: int, offset: int) -> tuple[bytes, bool]:
    """The next bytes after ``offset``, waiting for them; and whether the attempt is over."""
    while True:
        data = await _read(svc, job_id, attempt, offset)
        if data:
            return data, False
        job = await svc.job_now(job_id)
        if _over(job, attempt) or svc.stopping:
            # One last read: bytes committed together with the end are not missed.
            return await _read(svc, job_id, attempt, offset), True
        await svc.wait_for_job(job_id, FOLLOW_POLL_S)


@routes.get(
    "/api/v1/jobs/{id}/logs",
    summary="A job's logs (text, follow, or SSE)",
    reply="text",
    query=(
        ("attempt", "integer"),
        ("offset", "integer"),
        ("follow", "string"),
        ("download", "string"),
    ),
    headers=("Last-Event-ID",),
)
async def logs(request: web.Request) -> web.StreamResponse:
    who = require_role(request, "read", "submit")
    svc = service(request)
    job = await svc.visible_job(who, request.match_info["id"])
    attempt, offset = _args(request, job)
    follow = request.query.get("follow") in ("1", "true", "yes")
    if "text/event-stream" in request.headers.get("Accept", ""):
        with svc.streams.slot(who.digest):
            return await _sse(request, svc, job.id, attempt, offset)
    headers = {"X-Berth-Attempt": str(attempt)}
    if request.query.get("download") in ("1", "true", "yes"):
        headers["Content-Disposition"] = f'attachment; filename="{job.id}-{attempt}.log"'
    if not follow:
        out = bytearray()
        while chunk := await _read(svc, job.id, attempt, offset + len(out)):
            out += chunk
        headers["X-Berth-Log-Offset"] = str(offset + len(out))
        return web.Response(body=bytes(out), content_type="text/plain", headers=headers)
    with svc.streams.slot(who.digest):
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "text/plain"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            while True:
                data, over = await _follow(svc, job.id, attempt, offset)
                if data:
                    await resp.write(data)
                    offset += len(data)
                if over and not data:
                    break
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
    return resp


async def _sse(
    request: web.Request, svc: Scheduler, job_id: str, attempt: int, offset: int
) -> web.StreamResponse:
    """Log bytes as SSE ``log`` events whose id is the byte offset after them."""
    async with sse_response(request, ping_interval=KEEPALIVE_S) as resp:
        try:
            while True:
                data, over = await _follow(svc, job_id, attempt, offset)
                if data:
                    offset += len(data)
                    text = data.decode("utf-8", errors="replace")
                    await resp.send(text, id=str(offset), event="log")
                if over and not data:
                    job = await svc.job_now(job_id)
                    end: dict[str, object] = {"attempt": attempt, "offset": offset}
                    if attempt == job.attempt:
                        end |= {"state": job.state.value, "exit_code": job.exit_code}
                    await resp.send(codec.dumps(end).decode(), event="end")
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
    return resp

"""The event stream: SSE for everything or one job, and a JSON page for plain requests,
with replay from an index (scheduler.routes.replay; the WebSocket is in
scheduler.routes.socket)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from aiohttp_sse import sse_response

from common import codec
from common.errors import Gone, InvalidRequest
from scheduler.bus import TOPICS
from scheduler.commands import Scheduler
from scheduler.config import KEEPALIVE_S
from scheduler.http import principal, query_int, require_role
from scheduler.routes import service
from scheduler.routes.replay import (
    Live,
    Pruned,
    Replayed,
    Reset,
    Resync,
    history,
    overflowed,
    replay,
    subscription,
    transport_of,
)
from scheduler.routes.table import RouteTable
from scheduler.store.base import RawEvent

log = logging.getLogger(__name__)
routes = RouteTable()

#: events in one plain (non-streaming) reply
PAGE_LIMIT = 1000
#: a stalled SSE client is cut off after a write blocks this long
SEND_TIMEOUT_S = 10.0


def _topics(request: web.Request) -> frozenset[str]:
    raw = request.query.get("topics")
    if not raw:
        return TOPICS
    topics = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = topics - TOPICS
    if unknown or not topics:
        raise InvalidRequest(
            f"topics must be among {', '.join(sorted(TOPICS))}", {"field": "topics"}
        )
    return topics


def _since(request: web.Request) -> int | None:
    """Where to resume: Last-Event-ID wins over ?since=; None means live only."""
    header = request.headers.get("Last-Event-ID")
    if header:
        try:
            return max(0, int(header))
        except ValueError:
            raise InvalidRequest(
                "Last-Event-ID must be an event index", {"field": "Last-Event-ID"}
            ) from None
    return query_int(request, "since", None, lo=0)


async def _sse(request: web.Request, job_id: str | None) -> web.StreamResponse:
    svc = service(request)
    topics = TOPICS if job_id is not None else _topics(request)
    since = _since(request)
    streaming = "text/event-stream" in request.headers.get("Accept", "")
    if not streaming:
        return await _page(request, svc, topics, job_id, since or 0)
    transport = transport_of(request)
    digest = principal(request).digest
    with svc.streams.slot(digest), svc.subscriptions.slot(digest):
        return await _stream(request, svc, topics, job_id, since, transport)


async def _stream(
    request: web.Request,
    svc: Scheduler,
    topics: frozenset[str],
    job_id: str | None,
    since: int | None,
    transport: asyncio.BaseTransport | None,
) -> web.StreamResponse:
    sub = svc.bus.subscribe(
        subscription(request, svc, topics, job_id, lambda: overflowed(svc, transport, "sse"))
    )
    upto = svc.index
    items = replay(svc, sub, since, upto, svc.bus.replay_sse, principal(request).digest)
    try:
        async with (
            sse_response(
                request,
                ping_interval=KEEPALIVE_S,
                send_timeout=SEND_TIMEOUT_S,
                headers={"X-Berth-Index": str(upto)},
            ) as resp,
            contextlib.aclosing(items),
        ):
            async for item in items:
                if type(item) is Live:
                    # The common case first: a commit's events, in one write.
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await resp.write(b"".join([part.sse for part in item.parts]))
                    continue
                match item:
                    case Replayed(chunk):
                        async with asyncio.timeout(SEND_TIMEOUT_S):
                            await resp.write(chunk)
                    case Reset(oldest, index):
                        body = {
                            "reason": "events before this index are no longer kept",
                            "oldest": oldest,
                            "index": index,
                        }
                        await resp.send(codec.dumps(body).decode(), id=str(index), event="reset")
                    case Resync(index):
                        body = {"reason": "too slow: events were dropped", "index": index}
                        await resp.send(codec.dumps(body).decode(), event="resync")
    except (ConnectionResetError, TimeoutError, asyncio.CancelledError):
        pass
    finally:
        svc.bus.unsubscribe(sub)
    return resp


async def _page(
    request: web.Request, svc: Scheduler, topics: frozenset[str], job_id: str | None, since: int
) -> web.Response:
    """A plain request gets one JSON page of events after ``since`` (410 if too old)."""
    sub = subscription(request, svc, topics, job_id, lambda: None)
    upto = svc.index
    rows: list[RawEvent] = []
    try:
        async for _, chunk in history(svc, sub, since, upto, list, principal(request).digest):
            rows.extend(chunk)
            if len(rows) >= PAGE_LIMIT:
                del rows[PAGE_LIMIT:]
                break
    except Pruned as r:
        raise Gone(
            "events before this index are no longer kept", {"oldest": r.oldest, "index": upto}
        ) from None
    # The stored documents as they are, in the shape of {"events", "index", "next"}.
    body = b'{"events":[%s],"index":%d,"next":%d}' % (
        b",".join([doc for *_, doc in rows]),
        upto,
        rows[-1][0] if rows else since,
    )
    return web.Response(
        body=body,
        content_type="application/json",
        headers={"X-Berth-Index": str(upto)},
    )


@routes.get(
    "/api/v1/events",
    summary="Events (JSON page or SSE), replay from since",
    reply="events",
    query=(("since", "integer"), ("topics", "string"), ("job", "string")),
    headers=("Last-Event-ID",),
)
async def all_events(request: web.Request) -> web.StreamResponse:
    require_role(request, "read", "submit")
    job_id = request.query.get("job") or None
    if job_id is not None:
        await service(request).visible_job(principal(request), job_id)
    return await _sse(request, job_id)


@routes.get(
    "/api/v1/jobs/{id}/events",
    summary="A job's events (JSON page or SSE)",
    reply="events",
    query=(("since", "integer"),),
    headers=("Last-Event-ID",),
)
async def job_events(request: web.Request) -> web.StreamResponse:
    require_role(request, "read", "submit")
    job_id = request.match_info["id"]
    await service(request).visible_job(principal(request), job_id)
    return await _sse(request, job_id)

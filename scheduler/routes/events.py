"""The event stream: SSE for everything or one job, a JSON page for plain requests, and
a WebSocket with subscribe / unsubscribe, all with replay from an index.

Replay is exact: a subscriber is registered (buffering live events) before history
is read, history covers (since, index at subscription], and live events at or below
what was already sent are skipped, so nothing is missed and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import WSMsgType, web
from aiohttp_sse import sse_response

from common import codec
from common.errors import BerthError, Gone, InvalidRequest, TooManyRequests
from scheduler import access
from scheduler.bus import TOPICS, Subscription
from scheduler.config import KEEPALIVE_S
from scheduler.events import Event
from scheduler.http import principal, query_int, require_role
from scheduler.routes import service, visible_job
from scheduler.service import Service

log = logging.getLogger("berth.events")
routes = web.RouteTableDef()

#: events read from the store per page while replaying
REPLAY_PAGE = 1000
#: events in one plain (non-streaming) reply
PAGE_LIMIT = 1000
#: a stalled SSE client is cut off after a write blocks this long
SEND_TIMEOUT_S = 10.0
#: a subscriber that overflowed gets this long to read its resync notice
OVERFLOW_GRACE_S = 1.0
#: subscriptions one WebSocket may hold (the socket itself counts as one stream)
MAX_SOCKET_SUBSCRIPTIONS = 64


class _Reset(Exception):
    """The requested index is older than what is retained."""

    def __init__(self, oldest: int) -> None:
        self.oldest = oldest


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


async def history(svc: Service, sub: Subscription, since: int, upto: int) -> AsyncIterator[Event]:
    """Committed events in (since, upto] that the subscription wants, oldest first."""
    if sub.job_id is None and since + 1 < svc.cluster.events_pruned_below:
        raise _Reset(svc.cluster.events_pruned_below)
    recent = svc.cluster.events.replay(since)
    if recent is not None:
        for e in list(recent):
            if e.index > upto:
                return
            if sub.matches(e):
                yield e
        return
    after = since
    while after < upto:
        page = await svc.store.read_events(after, REPLAY_PAGE, sub.job_id)
        if not page:
            return
        for e in page:
            if e.index > upto:
                return
            if sub.matches(e):
                yield e
        after = page[-1].index


def _visibility(request: web.Request, svc: Service) -> Callable[[str], bool] | None:
    return access.job_visibility(principal(request), svc.cluster.find)


def _cut_off(transport: asyncio.BaseTransport | None) -> None:
    """Abort a slow subscriber's connection even if it is stuck in a write."""
    abort = getattr(transport, "abort", None)
    if transport is not None and abort is not None and not transport.is_closing():
        asyncio.get_running_loop().call_later(OVERFLOW_GRACE_S, abort)


def _transport(request: web.Request) -> asyncio.BaseTransport | None:
    # uvloop's transports are not asyncio.Transport subclasses; any with abort() will do.
    return request.transport


async def _sse(request: web.Request, job_id: str | None) -> web.StreamResponse:
    svc = service(request)
    topics = TOPICS if job_id is not None else _topics(request)
    since = _since(request)
    streaming = "text/event-stream" in request.headers.get("Accept", "")
    if not streaming:
        return await _page(request, svc, topics, job_id, since or 0)
    transport = _transport(request)
    with svc.streams.slot(principal(request).digest):
        return await _stream(request, svc, topics, job_id, since, transport)


async def _stream(
    request: web.Request,
    svc: Service,
    topics: frozenset[str],
    job_id: str | None,
    since: int | None,
    transport: asyncio.BaseTransport | None,
) -> web.StreamResponse:
    sub = svc.bus.subscribe(
        Subscription(
            topics,
            job_id,
            on_overflow=lambda: _cut_off(transport),
            visible=_visibility(request, svc),
        )
    )
    upto = svc.cluster.events.committed_index
    try:
        async with sse_response(
            request,
            ping_interval=KEEPALIVE_S,
            send_timeout=SEND_TIMEOUT_S,
            headers={"X-Berth-Index": str(upto)},
        ) as resp:
            last = upto
            if since is not None:
                last = since
                try:
                    async for e in history(svc, sub, since, upto):
                        await resp.send(codec.encode(e).decode(), id=str(e.index), event=e.type)
                        last = e.index
                except _Reset as r:
                    body = {
                        "reason": "events before this index are no longer kept",
                        "oldest": r.oldest,
                        "index": upto,
                    }
                    await resp.send(codec.dumps(body).decode(), id=str(upto), event="reset")
                last = max(last, upto)
            ended = False
            while not ended:
                # Everything already queued goes out in one write: a commit's events
                # wake each subscriber once, not once per event.
                batch = [await sub.queue.get()]
                while not sub.queue.empty():
                    batch.append(sub.queue.get_nowait())
                if sub.overflowed:
                    body = {"reason": "too slow: events were dropped", "index": last}
                    await resp.send(codec.dumps(body).decode(), event="resync")
                    break
                frames = []
                for live in batch:
                    if live is None:
                        ended = True
                        break
                    if live.index > last:
                        frames.append(svc.bus.sse_frame(live))
                        last = live.index
                if frames:
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await resp.write(b"".join(frames))
    except (ConnectionResetError, TimeoutError, asyncio.CancelledError):
        pass
    finally:
        svc.bus.unsubscribe(sub)
    return resp


async def _page(
    request: web.Request, svc: Service, topics: frozenset[str], job_id: str | None, since: int
) -> web.Response:
    """A plain request gets one JSON page of events after ``since`` (410 if too old)."""
    sub = Subscription(topics, job_id, visible=_visibility(request, svc))
    upto = svc.cluster.events.committed_index
    events: list[Event] = []
    try:
        async for e in history(svc, sub, since, upto):
            events.append(e)
            if len(events) >= PAGE_LIMIT:
                break
    except _Reset as r:
        raise Gone(
            "events before this index are no longer kept", {"oldest": r.oldest, "index": upto}
        ) from None
    body = {"events": events, "index": upto, "next": events[-1].index if events else since}
    return web.Response(
        body=codec.encode(body),
        content_type="application/json",
        headers={"X-Berth-Index": str(upto)},
    )


@routes.get("/api/v1/events")
async def all_events(request: web.Request) -> web.StreamResponse:
    require_role(request, "read", "submit")
    job_id = request.query.get("job") or None
    if job_id is not None:
        visible_job(request, job_id)
    return await _sse(request, job_id)


@routes.get("/api/v1/jobs/{id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    require_role(request, "read", "submit")
    job_id = request.match_info["id"]
    visible_job(request, job_id)
    return await _sse(request, job_id)


# --- WebSocket -------------------------------------------------------------------------


class _Socket:
    """One WebSocket connection and its subscriptions, each replayed like an SSE stream."""

    def __init__(self, svc: Service, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.svc = svc
        self.ws = ws
        self.request = request
        self.transport = _transport(request)
        self.subs: dict[str, tuple[Subscription, asyncio.Task[None]]] = {}
        self.send_lock = asyncio.Lock()

    async def send(self, message: dict[str, object]) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
        # that lands as the send completes, and an unsubscribe then waits forever for
        # a pump that never stops.
        async with self.send_lock, asyncio.timeout(SEND_TIMEOUT_S):
            await self.ws.send_str(codec.encode(message).decode())

    async def handle(self, raw: str | bytes) -> None:
        msg = codec.loads(raw)
        if not isinstance(msg, dict):
            raise InvalidRequest("a message is a JSON object", {"field": "$"})
        op = msg.get("op")
        sub_id = msg.get("id", "default")
        if not isinstance(sub_id, str) or not 0 < len(sub_id) <= 64:
            raise InvalidRequest("id must be a short string", {"field": "$.id"})
        if op == "subscribe":
            await self.subscribe(sub_id, msg)
        elif op == "unsubscribe":
            await self.unsubscribe(sub_id)
            await self.send({"type": "unsubscribed", "id": sub_id})
        else:
            raise InvalidRequest("op must be subscribe or unsubscribe", {"field": "$.op"})

    async def subscribe(self, sub_id: str, msg: dict[str, object]) -> None:
        if sub_id not in self.subs and len(self.subs) >= MAX_SOCKET_SUBSCRIPTIONS:
            raise TooManyRequests(
                f"a WebSocket may hold {MAX_SOCKET_SUBSCRIPTIONS} subscriptions; "
                "unsubscribe one first",
                {"field": "$.id", "limit": MAX_SOCKET_SUBSCRIPTIONS},
            )
        raw_topics = msg.get("topics", sorted(TOPICS))
        if not isinstance(raw_topics, list) or not set(raw_topics) <= TOPICS or not raw_topics:
            raise InvalidRequest("topics must be among jobs, nodes", {"field": "$.topics"})
        job_id = msg.get("job")
        if job_id is not None:
            if not isinstance(job_id, str):
                raise InvalidRequest("job must be a job id", {"field": "$.job"})
            visible_job(self.request, job_id)
        since = msg.get("since")
        if since is not None and (not isinstance(since, int) or since < 0):
            raise InvalidRequest("since must be an event index", {"field": "$.since"})
        await self.unsubscribe(sub_id)
        sub = self.svc.bus.subscribe(
            Subscription(
                frozenset(str(t) for t in raw_topics),
                job_id,
                on_overflow=lambda: _cut_off(self.transport),
                visible=_visibility(self.request, self.svc),
            )
        )
        upto = self.svc.cluster.events.committed_index
        await self.send({"type": "subscribed", "id": sub_id, "index": upto})
        task = asyncio.create_task(self._pump(sub_id, sub, since, upto))
        self.subs[sub_id] = (sub, task)

    async def unsubscribe(self, sub_id: str) -> None:
        entry = self.subs.pop(sub_id, None)
        if entry is None:
            return
        sub, task = entry
        self.svc.bus.unsubscribe(sub)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _pump(self, sub_id: str, sub: Subscription, since: int | None, upto: int) -> None:
        last = upto
        try:
            if since is not None:
                last = since
                try:
                    async for e in history(self.svc, sub, since, upto):
                        await self.send({"type": "event", "id": sub_id, "event": e})
                        last = e.index
                except _Reset as r:
                    await self.send(
                        {"type": "reset", "id": sub_id, "oldest": r.oldest, "index": upto}
                    )
                last = max(last, upto)
            while True:
                live = await sub.queue.get()
                if sub.overflowed:
                    await self.send({"type": "resync", "id": sub_id, "index": last})
                    await self.ws.close()
                    return
                if live is None:
                    await self.ws.close()
                    return
                if live.index <= last:
                    continue
                await self.send({"type": "event", "id": sub_id, "event": live})
                last = live.index
        except (ConnectionResetError, TimeoutError):
            return

    async def close(self) -> None:
        for sub_id in list(self.subs):
            await self.unsubscribe(sub_id)


@routes.get("/api/v1/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    who = require_role(request, "read", "submit")
    svc = service(request)
    with svc.streams.slot(who.digest):
        return await _serve_socket(request, svc)


async def _serve_socket(request: web.Request, svc: Service) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=KEEPALIVE_S, max_msg_size=64 * 1024)
    await ws.prepare(request)
    sock = _Socket(svc, ws, request)
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                await sock.handle(msg.data)
            except BerthError as e:
                await sock.send({"type": "error", "error": e.to_body()["error"]})
    finally:
        await sock.close()
    return ws

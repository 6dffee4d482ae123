"""The event stream: SSE for everything or one job, a JSON page for plain requests, and
a WebSocket with subscribe / unsubscribe, all with replay from an index.

Replay is exact: a subscriber is registered (buffering live events) before history
is read, history covers (since, index at subscription], and live events at or below
what was already sent are skipped, so nothing is missed and nothing is sent twice.

Replay is rationed: history is read and encoded in chunks, each under one of a few
replay slots (``--max-concurrent-replays``) held for one turn of the event loop, so
however many streams replay at once, other requests run between every few chunks. A
subscriber whose live events pile up past ``--stream-queue-bytes`` while it replays or
reads slowly is cut off and told to resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp_sse import sse_response

from common import codec
from common.errors import BerthError, Forbidden, Gone, InvalidRequest, TooManyRequests
from scheduler import access
from scheduler.bus import TOPICS, EventBus, Part, Subscription
from scheduler.config import KEEPALIVE_S
from scheduler.http import principal, query_int, require_role
from scheduler.routes import service, visible_job
from scheduler.routes.table import RouteTable
from scheduler.service import Service
from scheduler.store.base import RawEvent

log = logging.getLogger("berth.events")
T = TypeVar("T")
routes = RouteTable()

#: events read from the store (or memory) and encoded per replay chunk
REPLAY_CHUNK = 500
#: events in one plain (non-streaming) reply
PAGE_LIMIT = 1000
#: a stalled SSE client is cut off after a write blocks this long
SEND_TIMEOUT_S = 10.0
#: a subscriber that overflowed gets this long to read its resync notice
OVERFLOW_GRACE_S = 1.0
#: subscriptions one WebSocket may hold (the socket itself counts as one stream)
MAX_SOCKET_SUBSCRIPTIONS = 64


class _Pruned(Exception):
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


async def history(
    svc: Service,
    sub: Subscription,
    since: int,
    upto: int,
    render: Callable[[list[RawEvent]], T],
    key: str,
) -> AsyncIterator[tuple[int, T]]:
    """Committed events in (since, upto] that the subscription wants, oldest first, in
    rendered chunks with the index of each chunk's last event.

    Each chunk is read and rendered under a replay slot held for one turn of the loop:
    replays take turns with each other and with everything else the scheduler does,
    and the replays of one token (``key``) count as one in the queue for slots."""
    if sub.job_id is None and since + 1 < svc.cluster.events_pruned_below:
        raise _Pruned(svc.cluster.events_pruned_below)
    recent = svc.cluster.events.replay(since)
    # A copy: the in-memory window moves on while the replay waits for its turns. One
    # job's few events are picked out at once rather than a chunk of the window a turn.
    job_id = sub.job_id
    memory = (
        None
        if recent is None
        else [e for e in recent if e.index <= upto and (job_id is None or e.job_id == job_id)]
    )
    after, at = since, 0
    doc = svc.bus.doc
    while after < upto and not sub.overflowed:
        async with svc.replays.slot(key):
            if memory is not None:
                events = memory[at : at + REPLAY_CHUNK]
                at += len(events)
                end = events[-1].index if events else upto
                wanted = [(e.index, e.type, e.job_id, doc(e)) for e in events if sub.matches(e)]
            else:
                # Stored documents go out as they are: nothing decoded or encoded again.
                rows = await svc.store.read_raw_events(after, REPLAY_CHUNK, sub.job_id)
                end = rows[-1][0] if rows else upto
                wanted = [r for r in rows if r[0] <= upto and sub.wants(r[1], r[2])]
            rendered = render(wanted) if wanted else None
            await asyncio.sleep(0)
        if end >= upto and not wanted:
            return
        after = end
        if rendered is not None:
            yield wanted[-1][0], rendered


@dataclass(frozen=True, slots=True)
class Replayed(Generic[T]):
    """A chunk of history, rendered for the transport."""

    chunk: T


@dataclass(frozen=True, slots=True)
class Reset:
    """History from the requested index is no longer kept (events before ``oldest``
    were pruned); live events follow from ``index``."""

    oldest: int
    index: int


@dataclass(frozen=True, slots=True)
class Live:
    """Live events not sent before, by committed batch (a batch's SSE frames encoded
    once for every subscriber that sees it)."""

    parts: list[Part]


@dataclass(frozen=True, slots=True)
class Resync:
    """The subscriber fell too far behind: its events were dropped after ``index``. The
    last thing it is sent."""

    index: int


async def replay(
    svc: Service,
    sub: Subscription,
    since: int | None,
    upto: int,
    render: Callable[[list[RawEvent]], T],
    key: str,
    turn: contextlib.AbstractAsyncContextManager[object] | None = None,
) -> AsyncGenerator[Replayed[T] | Reset | Live | Resync, None]:
    """What to send one subscription, in order, for either transport.

    With ``since``: the history in (since, upto] in rendered chunks (see
    :func:`history`, whose ``key`` this is), or a :class:`Reset` when it is no longer
    kept. ``sub`` must have been subscribed before ``upto`` was read. Then live events
    as they come, without those at or below what was already sent, until the bus
    closes the subscription; or a :class:`Resync` once it overflowed. ``turn`` is held
    while history is sent (the consumer writes those chunks inside it)."""
    last = upto
    if since is not None:
        last = since
        try:
            async with contextlib.nullcontext() if turn is None else turn:
                async for sent, chunk in history(svc, sub, since, upto, render, key):
                    yield Replayed(chunk)
                    last = sent
        except _Pruned as r:
            yield Reset(r.oldest, upto)
        if not sub.overflowed:
            last = max(last, upto)
    while True:
        # Everything already waiting goes out at once: a commit's events wake each
        # subscriber once, not once per event.
        parts = await sub.take()
        if sub.overflowed:
            yield Resync(last)
            return
        fresh = _unsent(svc.bus, parts, last)
        if fresh:
            last = fresh[-1].events[-1].index
            yield Live(fresh)
        if sub.closed:
            return


def _unsent(bus: EventBus, parts: list[Part], last: int) -> list[Part]:
    """The parts with only their events after ``last``."""
    out = []
    for part in parts:
        if part.events[0].index > last:
            out.append(part)
        elif part.events[-1].index > last:
            # Only where replay and live events overlap.
            events = [e for e in part.events if e.index > last]
            out.append(Part(events, bus.sse(events)))
    return out


def _subscription(
    request: web.Request,
    svc: Service,
    topics: frozenset[str],
    job_id: str | None,
    on_overflow: Callable[[], None],
) -> Subscription:
    who = principal(request)
    return Subscription(
        topics,
        job_id,
        owner=None if access.sees_all_jobs(who) else who.name,
        visible=access.job_visibility(who, svc.cluster.find),
        max_bytes=svc.config.stream_queue_bytes,
        on_overflow=on_overflow,
    )


def _overflowed(svc: Service, transport: asyncio.BaseTransport | None, kind: str) -> None:
    svc.metrics.stream_cutoffs.labels(kind).inc()
    _cut_off(transport)


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
    digest = principal(request).digest
    with svc.streams.slot(digest), svc.subscriptions.slot(digest):
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
        _subscription(request, svc, topics, job_id, lambda: _overflowed(svc, transport, "sse"))
    )
    upto = svc.cluster.events.committed_index
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
                    case Live(parts):
                        async with asyncio.timeout(SEND_TIMEOUT_S):
                            await resp.write(b"".join([part.sse for part in parts]))
                    case Resync(index):
                        body = {"reason": "too slow: events were dropped", "index": index}
                        await resp.send(codec.dumps(body).decode(), event="resync")
    except (ConnectionResetError, TimeoutError, asyncio.CancelledError):
        pass
    finally:
        svc.bus.unsubscribe(sub)
    return resp


async def _page(
    request: web.Request, svc: Service, topics: frozenset[str], job_id: str | None, since: int
) -> web.Response:
    """A plain request gets one JSON page of events after ``since`` (410 if too old)."""
    sub = _subscription(request, svc, topics, job_id, lambda: None)
    upto = svc.cluster.events.committed_index
    rows: list[RawEvent] = []
    try:
        async for _, chunk in history(svc, sub, since, upto, list, principal(request).digest):
            rows.extend(chunk)
            if len(rows) >= PAGE_LIMIT:
                del rows[PAGE_LIMIT:]
                break
    except _Pruned as r:
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
        visible_job(request, job_id)
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
    visible_job(request, job_id)
    return await _sse(request, job_id)


# --- WebSocket -------------------------------------------------------------------------


class _Socket:
    """One WebSocket connection and its subscriptions, each replayed like an SSE stream."""

    def __init__(self, svc: Service, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.svc = svc
        self.ws = ws
        self.request = request
        self.digest = principal(request).digest
        self.transport = _transport(request)
        self.subs: dict[str, tuple[Subscription, asyncio.Task[None]]] = {}
        self.send_lock = asyncio.Lock()

    async def send(self, message: dict[str, object]) -> None:
        await self.send_encoded([codec.encode(message)])

    async def send_encoded(self, messages: list[bytes]) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
        # that lands as the send completes, and an unsubscribe then waits forever for
        # a pump that never stops.
        async with self.send_lock:
            await self._write(messages)

    async def _write(self, messages: list[bytes]) -> None:
        """Send with the send lock already held."""
        for message in messages:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.send_frame(message, WSMsgType.TEXT)

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
        if sub_id not in self.subs:
            # The token's cap counts every socket and stream it holds; refused here,
            # before anything of this socket changes.
            slots = self.svc.subscriptions
            if slots.per_key > 0 and slots.held(self.digest) >= slots.per_key:
                raise TooManyRequests(
                    f"this token already holds {slots.per_key} subscriptions; "
                    "unsubscribe one first",
                    {"field": "$.id", "limit": slots.per_key},
                )
        await self.unsubscribe(sub_id)
        self.svc.subscriptions.acquire(self.digest)
        sub = self.svc.bus.subscribe(
            _subscription(
                self.request,
                self.svc,
                frozenset(str(t) for t in raw_topics),
                job_id,
                lambda: _overflowed(self.svc, self.transport, "ws"),
            )
        )
        upto = self.svc.cluster.events.committed_index
        task = asyncio.create_task(self._pump(sub_id, sub, since, upto))
        self.subs[sub_id] = (sub, task)
        await self.send({"type": "subscribed", "id": sub_id, "index": upto})

    async def unsubscribe(self, sub_id: str) -> None:
        entry = self.subs.pop(sub_id, None)
        if entry is None:
            return
        sub, task = entry
        self.svc.bus.unsubscribe(sub)
        self.svc.subscriptions.release(self.digest)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _render(self, sub_id: str) -> Callable[[list[RawEvent]], list[bytes]]:
        """Event messages of one subscription around documents encoded once."""
        head = b'{"type":"event","id":' + codec.encode(sub_id) + b',"event":'

        def render(rows: list[RawEvent]) -> list[bytes]:
            return [head + doc + b"}" for *_, doc in rows]

        return render

    async def _pump(self, sub_id: str, sub: Subscription, since: int | None, upto: int) -> None:
        render = self._render(sub_id)
        # The socket is this replay's until its history is sent: its other
        # subscriptions wait their turn without reading a chunk each, so a socket that
        # reads nothing holds at most one chunk in memory.
        items = replay(self.svc, sub, since, upto, render, self.digest, turn=self.send_lock)
        try:
            async with contextlib.aclosing(items):
                async for item in items:
                    match item:
                        case Replayed(messages):
                            # The send lock is held already (the replay's turn).
                            await self._write(messages)
                        case Reset(oldest, index):
                            await self.send(
                                {"type": "reset", "id": sub_id, "oldest": oldest, "index": index}
                            )
                        case Live(parts):
                            doc = self.svc.bus.doc
                            rows = [
                                (e.index, e.type, e.job_id, doc(e))
                                for part in parts
                                for e in part.events
                            ]
                            await self.send_encoded(render(rows))
                        case Resync(index):
                            await self.send({"type": "resync", "id": sub_id, "index": index})
                            await self.ws.close(
                                code=WSCloseCode.TRY_AGAIN_LATER,
                                message=b"too slow: events were dropped",
                            )
                            return
            await self.ws.close()
        except (ConnectionResetError, TimeoutError):
            return

    async def close(self) -> None:
        for sub_id in list(self.subs):
            await self.unsubscribe(sub_id)


def _same_origin(request: web.Request, origin: str) -> bool:
    """Whether a browser's Origin is the scheduler's own (the scheme, host and port the
    request came to) or one the operator allowed (a proxy in front)."""
    origin = origin.strip().rstrip("/").lower()
    own = f"{request.scheme}://{request.host}".lower()
    allowed = {o.lower() for o in service(request).config.allowed_origins}
    return origin == own or origin in allowed


@routes.get("/api/v1/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    who = require_role(request, "read", "submit")
    # A browser names the page that opened the socket; another site's page must not
    # ride on credentials the browser holds. Clients with no Origin are not browsers.
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(request, origin):
        raise Forbidden(
            "this origin may not open the WebSocket", {"field": "Origin", "origin": origin}
        )
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

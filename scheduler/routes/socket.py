"""The WebSocket: subscribe and unsubscribe to event streams over one connection, each
replayed from an index like an SSE stream (scheduler.routes.replay)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from common import codec
from common.errors import BerthError, Forbidden, InvalidRequest, TooManyRequests
from scheduler.bus import TOPICS, Subscription
from scheduler.commands import Scheduler
from scheduler.config import KEEPALIVE_S
from scheduler.http import principal, require_role
from scheduler.routes import service
from scheduler.routes.events import SEND_TIMEOUT_S
from scheduler.routes.replay import (
    Live,
    Replayed,
    Reset,
    Resync,
    overflowed,
    replay,
    subscription,
    transport_of,
)
from scheduler.routes.table import RouteTable
from scheduler.store.base import RawEvent

log = logging.getLogger(__name__)
routes = RouteTable()

#: subscriptions one WebSocket may hold (the socket itself counts as one stream)
MAX_SOCKET_SUBSCRIPTIONS = 64


class _Socket:
    """One WebSocket connection and its subscriptions, each replayed like an SSE stream."""

    def __init__(self, svc: Scheduler, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.svc = svc
        self.ws = ws
        self.request = request
        self.digest = principal(request).digest
        self.transport = transport_of(request)
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
            raise InvalidRequest(
                f"topics must be among {', '.join(sorted(TOPICS))}", {"field": "$.topics"}
            )
        job_id = msg.get("job")
        if job_id is not None:
            if not isinstance(job_id, str):
                raise InvalidRequest("job must be a job id", {"field": "$.job"})
            await self.svc.visible_job(principal(self.request), job_id)
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
            subscription(
                self.request,
                self.svc,
                frozenset(str(t) for t in raw_topics),
                job_id,
                lambda: overflowed(self.svc, self.transport, "ws"),
            )
        )
        upto = self.svc.index
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
                                (e.index, e.type, e.job_id, d)
                                for part in parts
                                for e, d in zip(
                                    part.events,
                                    part.docs or [doc(e) for e in part.events],
                                    strict=True,
                                )
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


async def _serve_socket(request: web.Request, svc: Scheduler) -> web.WebSocketResponse:
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

"""aiohttp's connection protocol with a header deadline and a body deadline, under a
ConnectionGuard (scheduler/connguard.py says what the rules are and why).

- header: armed when a connection is made and at the first byte of each later
  request; disarmed once the parser has the whole header. More bytes do not re-arm it:
  a header sent a byte at a time must still be complete in time. Past it the
  connection is closed; there is no request to answer.
- body: while a request's body is incomplete, no more than the bound between bytes,
  not counting time the scheduler itself holds reading back (flow control). Past it
  the handler reading the body gets ``408 request_timeout`` and the connection closes.

Idle keep-alive connections are aiohttp's own to close (``keepalive_timeout``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from common.errors import BerthError
from scheduler.connguard import Conn, ConnectionGuard, Shed
from scheduler.http import Handler


class RequestTimeout(BerthError):
    """The request body stopped arriving."""

    code = "request_timeout"
    status = 408


_IDLE, _HEADER, _BODY = 0, 1, 2


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with the header and body deadlines.

    It reads aiohttp's parser state (``_request_count``, ``_messages``, ``_upgraded``,
    ``_reading_paused``, ``_buffer_paused``) after each chunk: aiohttp has no hook for
    "header complete"; tests/integration/test_slow_connections.py pins the behaviour.
    """

    __slots__ = ("_body", "_bound", "_conn", "_deadline", "_guard", "_phase", "_timer")

    def __init__(
        self,
        manager: Server,
        *,
        loop: asyncio.AbstractEventLoop,
        guard: ConnectionGuard,
        conn: Conn,
        bound: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._conn = conn
        self._bound = bound
        self._phase = _HEADER
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.attach(self._conn, self)
        self._arm(_HEADER)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._guard.closed(self._conn)
        super().connection_lost(exc)

    def authenticated(self) -> None:
        self._guard.authenticated(self._conn)

    def drop(self) -> None:
        self._disarm()
        transport = self.transport
        if transport is not None:
            # abort, not close: nothing is flushed to a client that may never read.
            transport.abort()
        self.force_close()

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            super().data_received(data)
            return
        seen = self._request_count
        super().data_received(data)
        if self.transport is None or self._upgraded:
            # closed, or a WebSocket now (which has heartbeats of its own)
            self._disarm()
        elif self._request_count != seen:
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._arm(_BODY)
            else:
                self._disarm()
        elif self._phase == _BODY:
            if self._body is None or self._body.is_eof():
                self._disarm()
            else:
                self._deadline = self._loop.time() + self._bound
        elif self._phase == _IDLE and data:
            self._arm(_HEADER)

    def _arm(self, phase: int) -> None:
        self._phase = phase
        self._deadline = self._loop.time() + self._bound
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._expire)

    def _disarm(self) -> None:
        self._phase = _IDLE
        self._body = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is None or self._phase == _IDLE:
            return
        now = self._loop.time()
        if self._reading_paused or self._buffer_paused:
            # The scheduler holds this client back; its time starts again on resuming.
            self._deadline = now + self._bound
        if self._phase == _BODY and (self._body is None or self._body.is_eof()):
            self._disarm()
        elif now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._expire)
        elif self._phase == _HEADER:
            self._guard.close(self._conn, Shed.HEADER_TIMEOUT)
        else:
            self._stalled()

    def _stalled(self) -> None:
        """The body stopped: its handler, reading it, gets 408, then the connection
        closes; once the handler has answered (aiohttp reads and drops the rest of an
        unread body for a while) there is no one to tell and it closes at once."""
        body = self._body
        self._disarm()
        if not self._request_in_progress:
            self._guard.close(self._conn, Shed.BODY_TIMEOUT)
            return
        self._guard.note(self._conn, Shed.BODY_TIMEOUT)
        # No more bytes are read from this connection, and it is not kept alive.
        self.close()
        if body is not None:
            body.set_exception(RequestTimeout(f"no bytes of the body for {self._bound:g} s"))
            # At its end: aiohttp does not wait on an unread rest before closing.
            body.feed_eof()
        # A handler that never answers does not keep it open past another bound.
        self._loop.call_later(self._bound, self._drop_if_open)

    def _drop_if_open(self) -> None:
        if self.transport is not None:
            self.drop()


def handler_factory(
    server: Server,
    guard: ConnectionGuard,
    *,
    header_timeout_s: float,
    keepalive_timeout_s: float,
) -> Callable[[Conn], GuardedRequestHandler]:
    """Protocols for the listener: one per accepted connection, serving ``server``'s app."""
    loop = asyncio.get_running_loop()

    def make(conn: Conn) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            server,
            loop=loop,
            guard=guard,
            conn=conn,
            bound=header_timeout_s,
            access_log=None,
            keepalive_timeout=keepalive_timeout_s,
        )

    return make


@web.middleware
async def authenticated_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After auth_middleware: a request with a valid token marks its connection
    authenticated, so the guard no longer counts or closes it."""
    if "principal" in request:
        protocol = request.protocol
        if isinstance(protocol, GuardedRequestHandler):
            protocol.authenticated()
    return await handler(request)

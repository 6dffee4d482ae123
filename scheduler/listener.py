"""The scheduler's listening sockets and their accept loop, under a ConnectionGuard.

asyncio's own server accepts up to its whole backlog in one go before any protocol
sees a connection, so a flood can take the last descriptor before anything can close
one, and on EMFILE it stops accepting for a second. This loop instead asks the guard
before each accept: with descriptors down to the reserve it first closes the oldest
unauthenticated connections (their descriptors are free a turn of the loop later) and,
with none left to close, pauses briefly, so the reserve is never spent on connections.
A connection from an address over its cap is closed as soon as it is accepted, before
any TLS handshake or HTTP parsing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from scheduler.connguard import Conn, ConnectionGuard

log = logging.getLogger(__name__)

#: connections accepted per readiness of a listening socket before the loop turns
ACCEPT_BATCH = 64
#: how long accepting pauses when no descriptor can be freed (or accept failed for want
#: of one); asyncio's own server pauses a second
PAUSE_S = 0.25
#: errors of accept() that mean "no descriptor or memory now", not a broken socket
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def bind(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (IPv6 ones IPv6-only,
    with SO_REUSEADDR, as asyncio's server makes them)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, _, _, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.create_server(addr, family=family, backlog=backlog)
            sock.setblocking(False)
            socks.append(sock)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener:
    """Accepts on ``socks`` and hands each admitted connection to a protocol from
    ``protocol(conn)``; with ``tls``, after a handshake of at most ``handshake_timeout``
    seconds."""

    def __init__(
        self,
        socks: list[socket.socket],
        protocol: Callable[[Conn], asyncio.Protocol],
        guard: ConnectionGuard,
        *,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = 60.0,
    ) -> None:
        self.socks = socks
        self._protocol = protocol
        self._guard = guard
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        for sock in self.socks:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close the listening sockets; handshakes under way are
        cancelled (connections already made are the aiohttp server's to close)."""
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        self._stop_reading()
        for sock in self.socks:
            sock.close()
        for task in list(self._tasks):
            task.cancel()

    def _stop_reading(self) -> None:
        for sock in self.socks:
            self._loop.remove_reader(sock.fileno())

    def _pause(self) -> None:
        self._stop_reading()
        self._resume = self._loop.call_later(PAUSE_S, self._restart)

    def _restart(self) -> None:
        self._resume = None
        if not self._closed:
            self.start()

    def _accept(self, sock: socket.socket) -> None:
        guard = self._guard
        for _ in range(ACCEPT_BATCH):
            if not guard.has_room():
                if not guard.make_room():
                    guard.paused()
                    self._pause()
                # Else the closed connections' descriptors are free on the next turn.
                return
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    guard.paused()
                    self._pause()
                else:
                    log.warning("accept on %s failed: %s", sock.getsockname(), e)
                return
            entry = guard.admit(peer, conn.fileno())
            if entry is None:
                conn.close()
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: socket.socket, entry: Conn) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._protocol(entry),
                sock,
                ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout if self._tls else None,
            )
        except asyncio.CancelledError:
            sock.close()
            self._guard.closed(entry)
            raise
        except OSError as e:  # TLS errors and handshake timeouts included
            # A failed or slow TLS handshake: the protocol never saw the connection.
            log.debug("connection from %s not made: %r", entry.peer, e)
            sock.close()
            self._guard.closed(entry)

"""Keeps the scheduler reachable when connections cost descriptors and do nothing.

A connection that sends half a request header and waits costs a file descriptor and
nothing else; a thousand of them used to shut out every agent. Four rules, each with a
flag (defaults in scheduler/config.py):

- ``--header-timeout``: a request's header must have arrived this long after its first
  byte (after the connection opened, for its first request), or the connection is
  closed: there is no request to answer. A request body that pauses as long gets
  ``408 request_timeout`` (through the handler reading it) and the connection closes.
  Time the scheduler itself holds the client back (flow control) does not count.
- ``--max-unauthenticated-per-address``: connections one client address (an IPv6
  client by its /64) may hold before a request on them carried a valid token; past it
  a new one is closed as soon as it is accepted. ``--unauthenticated-exempt`` names
  networks not counted (loopback by default).
- ``--fd-reserve``: descriptors kept free for the store, blobs and agents. While open
  descriptors are within the reserve of the open-files limit, the oldest unauthenticated
  connections are closed to make room for new ones; with none left, accepting pauses.
- ``--keepalive-timeout``: an idle keep-alive connection is closed (aiohttp's own).

An agent's long poll and heartbeat connections are authenticated by their first request
and never counted or closed by these rules.

:class:`ConnectionGuard` keeps the accounts and decides (no sockets, an injected clock
and descriptor count); scheduler/deadlines.py is aiohttp's connection protocol with the
two deadlines; scheduler/listener.py accepts under the guard.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, Protocol

from common.fdlimit import open_fd_count
from scheduler.metrics import ConnectionFigures

log = logging.getLogger(__name__)

#: seconds between counts of the process's open descriptors; nearer the limit (within
#: twice the reserve) they are counted more often
RECOUNT_S = 1.0
RECOUNT_NEAR_S = 0.1
#: oldest unauthenticated connections closed at once to make room
EVICT_BATCH = 16
#: a kind of closing is logged at most once in this many seconds (with a count)
LOG_EVERY_S = 10.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Shed(StrEnum):
    """Why the guard closed or refused a connection (the metric's ``reason``)."""

    #: its request header did not arrive in time
    HEADER_TIMEOUT = "header_timeout"
    #: its request body stopped arriving
    BODY_TIMEOUT = "body_timeout"
    #: its address already held its share of connections without a valid token
    ADDRESS_CAP = "address_cap"
    #: descriptors were down to the reserve; the oldest unauthenticated went first
    FD_RESERVE = "fd_reserve"


class Droppable(Protocol):
    def drop(self) -> None:
        """Close the connection now, whatever it is doing."""


class Conn:
    """One accepted connection as the guard counts it."""

    __slots__ = ("closing", "done", "handler", "key", "peer")

    def __init__(self, key: str | None, peer: Any) -> None:
        #: the address it is counted under; None: not counted (exempt, or no cap)
        self.key = key
        self.peer = peer
        #: its protocol, once the connection is made (after the TLS handshake)
        self.handler: Droppable | None = None
        self.closing = False
        self.done = False


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) to networks; ValueError names a bad one."""
    out: list[Network] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"{item!r} is not an address or network: {e}") from e
    return tuple(out)


class ConnectionGuard:
    """The accounts of the scheduler's connections and what to close.

    Parameters:
    - ``fd_limit``: the open-files limit in force; ``fd_reserve``: descriptors kept free.
    - ``per_address``: unauthenticated connections one address may hold (0: no cap);
      ``exempt``: networks not counted.
    - ``on_shed(reason)``: called for every connection closed or refused by a rule;
      ``on_pause()``: for every pause of accepting.
    - ``clock`` and ``count_fds`` (open descriptors, None where unknown): for tests.

    Descriptors are counted cheaply: the process's count taken now and then, plus the
    connections accepted and closed since, and never less than the newest accepted
    descriptor's number says (POSIX hands out the lowest free one).
    """

    def __init__(
        self,
        *,
        fd_limit: int,
        fd_reserve: int,
        per_address: int,
        exempt: tuple[Network, ...] = (),
        on_shed: Callable[[Shed], None] = lambda _: None,
        on_pause: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        count_fds: Callable[[], int | None] = open_fd_count,
    ) -> None:
        self.fd_limit = fd_limit
        self.fd_reserve = fd_reserve
        self.per_address = per_address
        self.exempt = exempt
        self._on_shed = on_shed
        self._on_pause = on_pause
        self._clock = clock
        self._count_fds = count_fds
        #: accepted and not yet closed; of them, closing (their descriptors soon free)
        self._open = 0
        self._closing = 0
        #: unauthenticated connections, oldest first
        self._unauth: dict[Conn, None] = {}
        self._by_key: Counter[str] = Counter()
        #: descriptors besides accepted connections, as last counted
        self._other = 0
        self._counted_at = float("-inf")
        #: reason -> (last logged at, closed since)
        self._logged: dict[str, tuple[float, int]] = {}

    # --- connections ------------------------------------------------------------------

    def admit(self, peer: Any, fileno: int = -1) -> Conn | None:
        """Account for a connection just accepted from ``peer``, or None: refuse it
        (its address holds its share of unauthenticated connections)."""
        key = self.key_of(peer)
        if key is not None and self._by_key[key] >= self.per_address:
            self._note(Shed.ADDRESS_CAP, peer)
            return None
        conn = Conn(key, peer)
        self._open += 1
        self._unauth[conn] = None
        if key is not None:
            self._by_key[key] += 1
        # Descriptors 0 .. fileno - 1 are all open, or the kernel had handed out a lower one.
        self._other = max(self._other, fileno + 1 - self._open)
        return conn

    def attach(self, conn: Conn, handler: Droppable) -> None:
        conn.handler = handler

    def authenticated(self, conn: Conn) -> None:
        """A request on ``conn`` carried a valid token: it is no longer counted."""
        if conn in self._unauth:
            self._forget(conn)

    def closed(self, conn: Conn) -> None:
        if conn.done:
            return
        conn.done = True
        self._open -= 1
        if conn.closing:
            self._closing -= 1
        if conn in self._unauth:
            self._forget(conn)

    def close(self, conn: Conn, reason: Shed) -> None:
        """Close ``conn`` now for ``reason``."""
        if conn.closing or conn.done:
            return
        conn.closing = True
        self._closing += 1
        self._note(reason, conn.peer)
        if conn.handler is not None:
            conn.handler.drop()

    def note(self, conn: Conn, reason: Shed) -> None:
        """Count and log ``reason`` for a connection that closes by itself."""
        self._note(reason, conn.peer)

    def key_of(self, peer: Any) -> str | None:
        """The address ``peer`` is counted under, or None if it is not counted."""
        if self.per_address <= 0 or not isinstance(peer, tuple) or not peer:
            return None
        try:
            ip: Address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.exempt):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            # One host is usually given a whole /64.
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    def _forget(self, conn: Conn) -> None:
        del self._unauth[conn]
        if conn.key is not None:
            self._by_key[conn.key] -= 1
            if not self._by_key[conn.key]:
                del self._by_key[conn.key]

    # --- descriptors ------------------------------------------------------------------

    def open_fds(self) -> int:
        """The process's open descriptors, as well as the guard knows."""
        now = self._clock()
        near = self._other + self._open >= self.fd_limit - 2 * self.fd_reserve
        if now - self._counted_at >= (RECOUNT_NEAR_S if near else RECOUNT_S):
            self._counted_at = now
            total = self._count_fds()
            if total is not None:
                self._other = max(0, total - self._open)
        return self._other + self._open

    def has_room(self) -> bool:
        """Whether one more connection leaves the reserve untouched (connections being
        closed count as closed: their descriptors are free within a turn of the loop)."""
        return self.open_fds() - self._closing < self.fd_limit - self.fd_reserve

    def make_room(self) -> bool:
        """Close the oldest unauthenticated connections (up to EVICT_BATCH); False when
        there is none to close, and accepting should pause."""
        victims = [
            c for c in self._unauth if c.handler is not None and not c.closing and not c.done
        ][:EVICT_BATCH]
        for conn in victims:
            self.close(conn, Shed.FD_RESERVE)
        return bool(victims)

    def paused(self) -> None:
        self._on_pause()
        self._log_rate_limited(
            "pause",
            "accepting paused: %d of %d descriptors open (%d kept in reserve) and no "
            "unauthenticated connection left to close",
            self.open_fds(),
            self.fd_limit,
            self.fd_reserve,
        )

    def figures(self) -> ConnectionFigures:
        unauth = len(self._unauth)
        return ConnectionFigures(
            authenticated=self._open - unauth,
            unauthenticated=unauth,
            open_fds=self.open_fds(),
            fd_limit=self.fd_limit,
            fd_reserve=self.fd_reserve,
        )

    # --- logging ----------------------------------------------------------------------

    def _note(self, reason: Shed, peer: Any) -> None:
        self._on_shed(reason)
        self._log_rate_limited(
            reason.value,
            "connection from %s closed: %s; %d of %d descriptors open",
            peer[0] if isinstance(peer, tuple) and peer else peer,
            reason.value,
            self._other + self._open,
            self.fd_limit,
        )

    def _log_rate_limited(self, kind: str, msg: str, *args: Any) -> None:
        """Log the first of a kind at once, then at most one line per LOG_EVERY_S that
        says how many there were since the previous line."""
        now = self._clock()
        last, count = self._logged.get(kind, (float("-inf"), 0))
        count += 1
        if now - last < LOG_EVERY_S:
            self._logged[kind] = (last, count)
            return
        self._logged[kind] = (now, 0)
        if count > 1:
            msg += " (%d such since the last line, %.0f s ago)"
            args = (*args, count, now - last)
        log.warning(msg, *args)

"""Refuses writes up front while the state directory cannot take them.

A handler changes the in-memory state before its commit, and a failed commit cannot
take that change back; so a write the store would fail is refused before the
handler runs, with 503 ``unavailable`` naming the cause, and nothing changes. Two
conditions refuse writes, in the manner of a flood-stage disk watermark:

- the store's last write failed (the store retries by itself; writes are accepted
  again as soon as one succeeds);
- the state directory's file system has less free space than the reserve. The
  reserve is kept for the scheduler's own bookkeeping, so agents may still register,
  heartbeat and report how their jobs ended (small writes that keep running work
  accounted for) while clients' writes, log appends and uploads are refused.

Reads are never refused. A write that fails anyway because the disk filled up (a
blob upload, say) answers 503 instead of 500.

A blob upload reserves its declared size as it starts (:meth:`WriteGuard.reserve`):
an upload is taken only if it fits above the reserve in the free space less what
uploads in flight may still write (their declared sizes less what they wrote), and is
refused (503) before its body is read otherwise; so uploads that each fit cannot
together fill the disk. Other writes are checked against the free space itself: an
upload that declares much and sends little holds back other uploads, never them.

Parameters of :class:`WriteGuard` and their defaults:

- ``reserve_bytes``: the free space kept back; by default ``RESERVE_FRACTION`` of the
  file system, at least ``RESERVE_MIN_BYTES`` and at most ``RESERVE_MAX_BYTES``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from common.errors import Unavailable
from scheduler.store.base import Store

#: share of the state directory's file system kept free for the scheduler's bookkeeping
RESERVE_FRACTION = 0.05
RESERVE_MIN_BYTES = 1024 * 1024
RESERVE_MAX_BYTES = 64 * 1024 * 1024
#: what a full disk (or quota) looks like from a write
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: methods that change nothing
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: writes that touch no state on disk (a dashboard session lives in memory), and the
#: agent protocol's small writes, still taken while only the reserve is left: canonical
#: paths from the route table (:class:`scheduler.routes.table.Route`)
STATELESS_PATHS: web.AppKey[frozenset[str]] = web.AppKey("stateless_paths")
BOOKKEEPING_PATHS: web.AppKey[frozenset[str]] = web.AppKey("bookkeeping_paths")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def default_reserve(total_bytes: int) -> int:
    return max(RESERVE_MIN_BYTES, min(RESERVE_MAX_BYTES, int(total_bytes * RESERVE_FRACTION)))


class Reservation:
    """Space promised to one upload in flight: its declared size less what it wrote."""

    __slots__ = ("declared", "written")

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self.written = 0

    def wrote(self, n: int) -> None:
        self.written += n

    @property
    def remaining(self) -> int:
        return max(0, self.declared - self.written)


class WriteGuard:
    def __init__(
        self,
        state_dir: Path,
        store: Store,
        *,
        reserve_bytes: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.store = store
        self.reserve_bytes = reserve_bytes
        #: uploads in flight
        self._reservations: set[Reservation] = set()

    @property
    def promised_bytes(self) -> int:
        """Bytes uploads in flight may still write."""
        return sum(r.remaining for r in self._reservations)

    def _space(self) -> tuple[int, int] | None:
        """(free bytes, reserve), or None when the state directory cannot be looked at."""
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            # Not there yet (before the first start) or unreadable: the store says more.
            return None
        reserve = self.reserve_bytes
        if reserve is None:
            reserve = default_reserve(st.f_blocks * st.f_frsize)
        return st.f_bavail * st.f_frsize, reserve

    @contextmanager
    def reserve(self, declared: int) -> Iterator[Reservation]:
        """Promise ``declared`` bytes to an upload while it runs; Unavailable (nothing
        promised) when they do not fit above the reserve next to the uploads in flight.
        The upload reports what it has written to the reservation it is given."""
        space = self._space()
        if space is not None:
            free, reserve = space
            promised = self.promised_bytes
            if free - promised - declared < reserve:
                why = (
                    f"an upload of {_kib(declared)} KiB does not fit: the state directory "
                    f"{self.state_dir} has {_kib(free)} KiB free, "
                    f"{_kib(promised)} KiB of it reserved for uploads in flight and "
                    f"{_kib(reserve)} KiB kept in reserve"
                )
                raise Unavailable(f"{why}; nothing was stored, try again later", {"cause": why})
        held = Reservation(declared)
        self._reservations.add(held)
        try:
            yield held
        finally:
            self._reservations.discard(held)

    def low_space(self) -> str | None:
        """Why the free space is too low for clients' writes, or None.

        Read at every write: statvfs costs a couple of microseconds, and a cached
        reading would let writes through for a while after the disk filled up.
        """
        space = self._space()
        if space is None:
            return None
        free, reserve = space
        if free >= reserve:
            return None
        return (
            f"the state directory {self.state_dir} has {_kib(free)} KiB free, "
            f"under the {_kib(reserve)} KiB kept in reserve"
        )

    def refusal(self, *, bookkeeping: bool = False) -> str | None:
        """Why a write would be refused now, or None. ``bookkeeping``: an agent's
        register, heartbeat or report, which may use the reserve."""
        if self.store.failure is not None:
            return f"the state cannot be written: {self.store.failure}"
        if bookkeeping:
            return None
        return self.low_space()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in _SAFE_METHODS:
            return await handler(request)
        route = request.match_info.route.resource
        canonical = route.canonical if route is not None else request.path
        if canonical in request.app[STATELESS_PATHS]:
            return await handler(request)
        why = self.refusal(bookkeeping=canonical in request.app[BOOKKEEPING_PATHS])
        if why is not None:
            raise Unavailable(f"{why}; nothing was changed, try again later", {"cause": why})
        try:
            return await handler(request)
        except OSError as e:
            if e.errno not in _NO_SPACE:
                raise
            why = f"the state directory {self.state_dir} is full ({e.strerror})"
            raise Unavailable(why, {"cause": why}) from e

    def status(self) -> dict[str, Any] | None:
        """For /readyz: why writes are refused, or None while they are taken."""
        why = self.refusal()
        return None if why is None else {"status": "unavailable", "cause": why}


def _kib(n: int) -> int:
    return n // 1024

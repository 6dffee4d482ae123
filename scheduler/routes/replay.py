"""Replay of the event history for a stream, the same for SSE and the WebSocket.

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
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import web

from scheduler import access
from scheduler.bus import EventBus, Part, Subscription
from scheduler.commands import Scheduler
from scheduler.http import principal
from scheduler.store.base import RawEvent

T = TypeVar("T")

#: events read from the store (or memory) and encoded per replay chunk
REPLAY_CHUNK = 500
#: a subscriber that overflowed gets this long to read its resync notice
OVERFLOW_GRACE_S = 1.0


class Pruned(Exception):
    """The requested index is older than what is retained."""

    def __init__(self, oldest: int) -> None:
        self.oldest = oldest


async def history(
    svc: Scheduler,
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
    if sub.job_id is None and since + 1 < svc.events_pruned_below:
        raise Pruned(svc.events_pruned_below)
    recent = svc.recent_events(since)
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
                rows = await svc.read_history(after, REPLAY_CHUNK, sub.job_id)
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
    svc: Scheduler,
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
        except Pruned as r:
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
        fresh = unsent(svc.bus, parts, last)
        if fresh:
            last = max(last, fresh[-1].events[-1].index)
            yield Live(fresh)
        if sub.closed:
            return


def unsent(bus: EventBus, parts: list[Part], last: int) -> list[Part]:
    """The parts with only their events after ``last``."""
    if not parts or parts[0].events[0].index > last:
        # Live events come in order after what was sent: nothing to cut (most calls).
        return parts
    out = []
    for part in parts:
        if part.live_only or part.events[0].index > last:
            out.append(part)
        elif part.events[-1].index > last:
            # Only where replay and live events overlap.
            events = [e for e in part.events if e.index > last]
            out.append(Part(events, bus.sse(events)))
    return out


def subscription(
    request: web.Request,
    svc: Scheduler,
    topics: frozenset[str],
    job_id: str | None,
    on_overflow: Callable[[], None],
) -> Subscription:
    who = principal(request)
    return Subscription(
        topics,
        job_id,
        owner=None if access.sees_all_jobs(who) else who.name,
        visible=access.job_visibility(who, svc.job_owner),
        max_bytes=svc.config.stream_queue_bytes,
        on_overflow=on_overflow,
    )


def overflowed(svc: Scheduler, transport: asyncio.BaseTransport | None, kind: str) -> None:
    svc.metrics.stream_cutoffs.labels(kind).inc()
    cut_off(transport)


def cut_off(transport: asyncio.BaseTransport | None) -> None:
    """Abort a slow subscriber's connection even if it is stuck in a write."""
    abort = getattr(transport, "abort", None)
    if transport is not None and abort is not None and not transport.is_closing():
        asyncio.get_running_loop().call_later(OVERFLOW_GRACE_S, abort)


def transport_of(request: web.Request) -> asyncio.BaseTransport | None:
    # uvloop's transports are not asyncio.Transport subclasses; any with abort() will do.
    return request.transport

"""Fan-out of committed events to live subscribers (SSE streams, WebSockets).

A subscriber never slows the scheduler: publishing only appends to each matching
subscriber's bounded queue. A subscriber whose queue overflows is marked, told to
resync and cut off (its connection is aborted even if it is stuck writing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from common import codec
from scheduler.events import Event

#: events a subscriber may have waiting before it counts as too slow
SUBSCRIBER_QUEUE = 10_000
TOPICS = frozenset({"jobs", "nodes"})
#: encoded frames kept for subscribers that are behind
FRAMES_KEPT = 20_000


def topic_of(event: Event) -> str:
    """``job.state`` -> ``jobs``, ``node.metrics`` -> ``nodes``."""
    return event.type.partition(".")[0] + "s"


class Subscription:
    """One subscriber's filter and its queue of events not yet sent."""

    def __init__(
        self,
        topics: frozenset[str],
        job_id: str | None = None,
        *,
        maxsize: int = SUBSCRIBER_QUEUE,
        on_overflow: Callable[[], None] = lambda: None,
        visible: Callable[[str], bool] | None = None,
    ) -> None:
        self.topics = topics
        self.job_id = job_id
        #: which jobs' events this subscriber may see (None: every job's)
        self.visible = visible
        # None in the queue means: the stream ends (the scheduler is stopping).
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.closed = False
        self._on_overflow = on_overflow

    def matches(self, event: Event) -> bool:
        if self.job_id is not None:
            return event.job_id == self.job_id
        if topic_of(event) not in self.topics:
            return False
        return self.visible is None or event.job_id is None or self.visible(event.job_id)

    def offer(self, event: Event) -> None:
        if self.overflowed or not self.matches(event):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._on_overflow()

    def close(self) -> None:
        self.closed = True
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.overflowed = True
            self._on_overflow()


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        #: encoded SSE frames of recent events, shared by every subscriber
        self._frames: dict[int, bytes] = {}

    def sse_frame(self, event: Event) -> bytes:
        """One event as an SSE frame, encoded once for all subscribers. The JSON has no
        newlines, so it is one data line."""
        frame = self._frames.get(event.index)
        if frame is None:
            frame = b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
                event.index,
                event.type.encode(),
                codec.encode(event),
            )
            if len(self._frames) >= FRAMES_KEPT:
                self._frames.pop(next(iter(self._frames)))
            self._frames[event.index] = frame
        return frame

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, sub: Subscription) -> Subscription:
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close_all(self) -> None:
        for sub in list(self._subs):
            sub.close()

    def publish(self, events: Iterable[Event]) -> None:
        batch = list(events)
        for sub in list(self._subs):
            for event in batch:
                sub.offer(event)

"""Fan-out of committed events to live subscribers (SSE streams, WebSockets).

A subscriber never slows the scheduler. Subscribers are indexed by what they see: one
job's events, or some topics of everyone's jobs, or some topics of one owner's jobs. A
committed batch is split once per index entry that has subscribers and encoded once
(shared bytes); each subscriber then only gets a reference to its part appended, so
publishing costs the same whether a part goes to one subscriber or to a thousand, and
nothing at all for subscribers that see none of the batch.

A subscriber whose unsent backlog passes its byte budget is marked, told to resync and
cut off (its connection is aborted even if it is stuck writing).

Live-only events (``stats.sample``, ``job.usage``: samples taken every few seconds)
are published but never stored: stored, they would push the jobs' own events out of
the replay window within hours. Such an event carries the index of the last stored
event before it and its SSE frame has no ``id:`` line, so a client's Last-Event-ID
stays on stored events; a reconnect replays what was stored and misses the samples
(``GET /api/v1/stats/history`` and ``/jobs/{id}/usage`` hold them).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from common import codec
from scheduler.events import Event
from scheduler.store.base import RawEvent

TOPICS = frozenset({"jobs", "nodes", "stats"})
#: encoded events kept for subscribers that are behind and for replays
FRAMES_KEPT = 20_000
#: unsent bytes a subscriber may have waiting before it counts as too slow
STREAM_QUEUE_BYTES = 4 * 1024 * 1024

#: an index entry: ("job", job id) or ("topics", topics, owner); owner None sees all jobs
GroupKey = tuple[object, ...]


def topic_of(event: Event) -> str:
    """``job.state`` -> ``jobs``, ``node.metrics`` -> ``nodes``, ``stats.sample`` ->
    ``stats``."""
    return topic_of_type(event.type)


def topic_of_type(type_: str) -> str:
    kind = type_.partition(".")[0]
    return kind if kind.endswith("s") else kind + "s"


class Part:
    """The events of one committed batch that one index entry sees, encoded once."""

    __slots__ = ("docs", "events", "sse")

    def __init__(self, events: list[Event], sse: bytes, docs: list[bytes] | None = None) -> None:
        self.events = events
        #: the SSE frames of all of ``events``, ready to write as they are
        self.sse = sse
        #: live-only events' documents (their indexes are not their own: the bus's
        #: caches, keyed by index, hold stored events only); None for stored events
        self.docs = docs

    @property
    def live_only(self) -> bool:
        return self.docs is not None


class Subscription:
    """One subscriber's filter and the parts of batches not yet sent to it."""

    def __init__(
        self,
        topics: frozenset[str],
        job_id: str | None = None,
        *,
        owner: str | None = None,
        visible: Callable[[str], bool] | None = None,
        max_bytes: int = STREAM_QUEUE_BYTES,
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        self.topics = topics
        self.job_id = job_id
        #: whose jobs' events it sees (None: every job's); the bus indexes on it
        self.owner = owner
        #: the same rule as a predicate, for replaying history
        self.visible = visible
        self.max_bytes = max_bytes
        self.pending: deque[Part] = deque()
        self.pending_bytes = 0
        self.overflowed = False
        self.closed = False
        self._wakeup: asyncio.Future[None] | None = None
        self._on_overflow = on_overflow

    @property
    def key(self) -> GroupKey:
        if self.job_id is not None:
            return ("job", self.job_id)
        return ("topics", self.topics, self.owner)

    def matches(self, event: Event) -> bool:
        return self.wants(event.type, event.job_id)

    def wants(self, type_: str, job_id: str | None) -> bool:
        """Whether an event of this type and job is for this subscriber."""
        if self.job_id is not None:
            return job_id == self.job_id
        if topic_of_type(type_) not in self.topics:
            return False
        return self.visible is None or job_id is None or self.visible(job_id)

    def offer(self, part: Part) -> None:
        if self.overflowed or self.closed:
            return
        self.pending_bytes += len(part.sse)
        if self.pending_bytes > self.max_bytes:
            self.overflowed = True
            self.pending.clear()
            self._on_overflow()
        else:
            self.pending.append(part)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        fut, self._wakeup = self._wakeup, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def take(self) -> list[Part]:
        """Every part waiting, once there is one, or none once the subscriber overflowed
        or the stream was closed (check ``overflowed`` and ``closed``)."""
        while not self.pending and not self.overflowed and not self.closed:
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        parts = list(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return parts


class EventBus:
    def __init__(self, owner_of: Callable[[str], str | None] = lambda _: None) -> None:
        #: who submitted a job (None: nobody a submit token could be)
        self.owner_of = owner_of
        self._groups: dict[GroupKey, set[Subscription]] = {}
        self._count = 0
        #: encoded events of recent events, shared by every subscriber
        self._docs: dict[int, bytes] = {}
        self._frames: dict[int, bytes] = {}

    def doc(self, event: Event) -> bytes:
        """One event as JSON, encoded once for all subscribers."""
        doc = self._docs.get(event.index)
        if doc is None:
            doc = codec.encode(event)
            if len(self._docs) >= FRAMES_KEPT:
                self._docs.pop(next(iter(self._docs)))
            self._docs[event.index] = doc
        return doc

    def sse_frame(self, event: Event) -> bytes:
        """One event as an SSE frame, encoded once for all subscribers. The JSON has no
        newlines, so it is one data line."""
        frame = self._frames.get(event.index)
        if frame is None:
            frame = b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
                event.index,
                event.type.encode(),
                self.doc(event),
            )
            if len(self._frames) >= FRAMES_KEPT:
                self._frames.pop(next(iter(self._frames)))
            self._frames[event.index] = frame
        return frame

    def sse(self, events: Iterable[Event]) -> bytes:
        return b"".join([self.sse_frame(e) for e in events])

    @staticmethod
    def replay_sse(rows: list[RawEvent]) -> bytes:
        """SSE frames of replayed events, around their documents as stored."""
        return b"".join(
            [
                b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (index, type_.encode(), doc)
                for index, type_, _, doc in rows
            ]
        )

    def __len__(self) -> int:
        return self._count

    def subscribe(self, sub: Subscription) -> Subscription:
        group = self._groups.setdefault(sub.key, set())
        if sub not in group:
            group.add(sub)
            self._count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        group = self._groups.get(sub.key)
        if group is None or sub not in group:
            return
        group.discard(sub)
        self._count -= 1
        if not group:
            del self._groups[sub.key]

    def close_all(self) -> None:
        for group in list(self._groups.values()):
            for sub in list(group):
                sub.close()

    def publish_live(self, events: Iterable[Event]) -> None:
        """Live-only events (see the module docstring), after everything stored so far."""
        self.publish(events, live=True)

    def part(self, events: list[Event], *, live: bool = False) -> Part:
        if not live:
            return Part(events, self.sse(events))
        docs = [codec.encode(e) for e in events]
        frames = [
            b"event: %s\r\ndata: %s\r\n\r\n" % (e.type.encode(), doc)
            for e, doc in zip(events, docs, strict=True)
        ]
        return Part(events, b"".join(frames), docs)

    def publish(self, events: Iterable[Event], *, live: bool = False) -> None:
        batch = list(events)
        if not batch or not self._groups:
            return
        by_job: dict[str, list[Event]] = {}
        by_owner: dict[str | None, list[Event]] = {}
        owners: dict[str, str | None] = {}
        unowned: list[Event] = []
        owned = any(k[0] == "topics" and k[2] is not None for k in self._groups)
        for e in batch:
            if e.job_id is None:
                unowned.append(e)
                continue
            by_job.setdefault(e.job_id, []).append(e)
            if owned:
                if e.job_id not in owners:
                    owners[e.job_id] = self.owner_of(e.job_id)
                by_owner.setdefault(owners[e.job_id], []).append(e)
        for key, subs in list(self._groups.items()):
            if key[0] == "job":
                seen = by_job.get(str(key[1]))
            else:
                seen = self._topic_part(batch, key, by_owner, unowned)
            if seen:
                part = self.part(seen, live=live)
                for sub in list(subs):
                    sub.offer(part)

    @staticmethod
    def _topic_part(
        batch: list[Event],
        key: GroupKey,
        by_owner: dict[str | None, list[Event]],
        unowned: list[Event],
    ) -> list[Event]:
        _, topics, owner = key
        assert isinstance(topics, frozenset)
        if owner is None:
            seen = batch
        elif not unowned:
            seen = by_owner.get(str(owner), [])
        else:
            mine = by_owner.get(str(owner), [])
            seen = sorted([*mine, *unowned], key=lambda e: e.index) if mine else unowned
        if topics != TOPICS:
            seen = [e for e in seen if topic_of(e) in topics]
        return seen

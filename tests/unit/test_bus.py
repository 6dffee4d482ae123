"""Routing of committed events to subscribers by the bus's index (pure logic)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from scheduler.bus import TOPICS, EventBus, Subscription
from scheduler.events import Event

OWNERS = {"a1": "alice", "b1": "bob", "b2": "bob"}
TS = datetime(2026, 1, 1, tzinfo=UTC)


def _batch() -> list[Event]:
    return [
        Event(1, "job.created", TS, job_id="a1"),
        Event(2, "job.created", TS, job_id="b1"),
        Event(3, "node.metrics", TS, node_id="n1"),
        Event(4, "job.state", TS, job_id="b2", data={"state": "cancelled"}),
        Event(5, "job.created", TS, job_id="gone"),
    ]


def _got(sub: Subscription) -> list[int]:
    return [e.index for part in sub.pending for e in part.events]


def test_each_subscriber_gets_what_it_may_see_and_no_more() -> None:
    bus = EventBus(owner_of=OWNERS.get)
    everything = bus.subscribe(Subscription(TOPICS))
    nodes = bus.subscribe(Subscription(frozenset({"nodes"})))
    alice = bus.subscribe(Subscription(TOPICS, owner="alice"))
    bobs_jobs = bus.subscribe(Subscription(frozenset({"jobs"}), owner="bob"))
    one_job = bus.subscribe(Subscription(frozenset({"nodes"}), "b2", owner="bob"))
    bus.publish(_batch())
    assert _got(everything) == [1, 2, 3, 4, 5]
    assert _got(nodes) == [3]
    # A submit token's subscription: its own jobs and node events, in order.
    assert _got(alice) == [1, 3]
    assert _got(bobs_jobs) == [2, 4]
    # One job's subscription sees that job's events whatever its topics.
    assert _got(one_job) == [4]


def test_subscribers_of_the_same_thing_share_one_encoded_part() -> None:
    bus = EventBus(owner_of=OWNERS.get)
    first = bus.subscribe(Subscription(TOPICS, owner="bob"))
    second = bus.subscribe(Subscription(TOPICS, owner="bob"))
    bus.publish(_batch())
    assert first.pending[0] is second.pending[0]
    part = first.pending[0]
    assert part.sse == b"".join(bus.sse_frame(e) for e in part.events)
    assert part.sse.startswith(b"id: 2\r\nevent: job.created\r\ndata: {")
    assert first.pending_bytes == len(part.sse)


def test_nothing_is_encoded_or_queued_for_subscribers_that_see_none_of_a_batch() -> None:
    bus = EventBus(owner_of=OWNERS.get)
    carol = bus.subscribe(Subscription(frozenset({"jobs"}), owner="carol"))
    bus.publish(_batch())
    assert not carol.pending and carol.pending_bytes == 0
    assert bus._frames == {}


def test_a_subscriber_past_its_byte_budget_is_cut_off_once() -> None:
    cut: list[int] = []
    bus = EventBus(owner_of=OWNERS.get)
    slow = bus.subscribe(Subscription(TOPICS, max_bytes=300, on_overflow=lambda: cut.append(1)))
    bus.publish(_batch()[:1])
    assert not slow.overflowed and len(slow.pending) == 1
    bus.publish(_batch()[1:])
    bus.publish(_batch())
    assert slow.overflowed and cut == [1]
    # What it had is dropped: it resyncs instead.
    assert asyncio.run(slow.take()) == [] and slow.pending_bytes == 0


def test_unsubscribed_subscribers_leave_the_index() -> None:
    bus = EventBus(owner_of=OWNERS.get)
    subs = [bus.subscribe(Subscription(TOPICS, owner="bob")) for _ in range(3)]
    job = bus.subscribe(Subscription(TOPICS, "b1"))
    assert len(bus) == 4
    for sub in [*subs, job]:
        bus.unsubscribe(sub)
        bus.unsubscribe(sub)
    assert len(bus) == 0 and bus._groups == {}
    bus.publish(_batch())
    assert all(not s.pending for s in [*subs, job])


def test_take_waits_for_a_part_or_the_end() -> None:
    async def scenario() -> tuple[list[int], bool]:
        bus = EventBus(owner_of=OWNERS.get)
        sub = bus.subscribe(Subscription(TOPICS))
        waiting = asyncio.create_task(sub.take())
        await asyncio.sleep(0)
        assert not waiting.done()
        bus.publish(_batch()[:2])
        got = [e.index for part in await waiting for e in part.events]
        ending = asyncio.create_task(sub.take())
        await asyncio.sleep(0)
        bus.close_all()
        assert await ending == []
        return got, sub.closed

    assert asyncio.run(scenario()) == ([1, 2], True)

"""Live-only events (stats.sample, job.usage) on the bus: routed like stored events,
framed without an SSE id, never confused with the stored event of the same index, and
never cut as already sent."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from scheduler.bus import TOPICS, EventBus, Subscription, topic_of_type
from scheduler.events import Event
from scheduler.routes.replay import unsent

OWNERS = {"a1": "alice", "b1": "bob"}
TS = datetime(2026, 1, 1, tzinfo=UTC)


def test_stats_samples_have_a_topic_of_their_own() -> None:
    assert "stats" in TOPICS
    assert topic_of_type("stats.sample") == "stats"
    assert topic_of_type("job.usage") == "jobs"
    assert topic_of_type("node.metrics") == "nodes"


def test_live_events_reach_whoever_sees_their_topic_or_job() -> None:
    bus = EventBus(owner_of=OWNERS.get)
    everything = bus.subscribe(Subscription(TOPICS))
    jobs_only = bus.subscribe(Subscription(frozenset({"jobs"})))
    stats_only = bus.subscribe(Subscription(frozenset({"stats"})))
    alice = bus.subscribe(Subscription(TOPICS, owner="alice"))
    bobs_job = bus.subscribe(Subscription(TOPICS, "b1", owner="bob"))
    bus.publish_live(
        [
            Event(7, "stats.sample", TS, data={"queued": 1}),
            Event(7, "job.usage", TS, job_id="b1", data={"attempt": 1, "samples": []}),
        ]
    )

    def got(sub: Subscription) -> list[str]:
        return [e.type for part in sub.pending for e in part.events]

    assert got(everything) == ["stats.sample", "job.usage"]
    assert got(jobs_only) == ["job.usage"]
    assert got(stats_only) == ["stats.sample"]
    # Samples of the cluster are everyone's; a job's usage is its owner's.
    assert got(alice) == ["stats.sample"]
    assert got(bobs_job) == ["job.usage"]


def test_a_live_event_has_no_sse_id_and_leaves_the_stored_event_of_its_index_alone() -> None:
    bus = EventBus()
    sub = bus.subscribe(Subscription(TOPICS))
    stored = Event(5, "job.created", TS, job_id="a1")
    bus.publish([stored])
    bus.publish_live([Event(5, "stats.sample", TS, data={"queued": 3})])
    stored_part, live_part = sub.pending
    assert not stored_part.live_only
    assert stored_part.sse.startswith(b"id: 5\r\n")
    assert live_part.live_only
    assert live_part.sse.startswith(b"event: stats.sample\r\ndata: ")
    assert b"id:" not in live_part.sse
    assert live_part.docs is not None
    assert orjson.loads(live_part.docs[0])["data"] == {"queued": 3}
    # The caches, keyed by index, still hold the stored event.
    assert orjson.loads(bus.doc(stored))["type"] == "job.created"
    assert bus.sse_frame(stored).startswith(b"id: 5\r\nevent: job.created")


def test_a_live_event_is_not_cut_as_sent_before() -> None:
    bus = EventBus()
    sub = bus.subscribe(Subscription(TOPICS))
    bus.publish([Event(4, "job.created", TS, job_id="a1")])
    bus.publish_live([Event(4, "stats.sample", TS, data={})])
    bus.publish([Event(5, "job.created", TS, job_id="a1")])
    parts = list(sub.pending)
    # A replay sent up to index 4: the stored event 4 goes, the sample stays.
    kept = unsent(bus, parts, 4)
    assert [(e.index, e.type) for p in kept for e in p.events] == [
        (4, "stats.sample"),
        (5, "job.created"),
    ]

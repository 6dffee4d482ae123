"""The incremental queue: shapes in order, sleeping shapes, backoffs, and a pass whose
work does not grow with the depth of the queue."""

from __future__ import annotations

from typing import Any

from common.models import Constraints
from common.states import JobState
from scheduler.placement import JobRequest
from scheduler.readyqueue import ReadyQueue
from tests.unit.test_cluster import FakeClock, new_cluster, register, submit


def req(job_id: str, seq: int, priority: int = 50, cpu: float = 1.0, **kw: Any) -> JobRequest:
    return JobRequest(id=job_id, cpu=cpu, memory_mb=256, priority=priority, seq=seq, **kw)


def test_a_shape_keeps_its_jobs_in_priority_then_submit_order() -> None:
    q = ReadyQueue()
    for job_id, seq, prio in (("a", 1, 50), ("b", 2, 90), ("c", 3, 50), ("d", 4, 90)):
        q.add(req(job_id, seq, prio), None, not_before=None, now=0.0, waiting=False)
    (shape,) = q.shapes()
    assert [e[2] for e in shape.entries] == ["b", "d", "a", "c"]
    q.remove("b")
    assert shape.head() == "d"


def test_jobs_asking_for_different_things_are_in_different_shapes() -> None:
    q = ReadyQueue()
    q.add(req("a", 1), None, not_before=None, now=0.0, waiting=False)
    q.add(req("b", 2, cpu=2.0), None, not_before=None, now=0.0, waiting=False)
    q.add(req("c", 3, constraints={"pool": "x"}), None, not_before=None, now=0.0, waiting=False)
    q.add(req("d", 4), "etl", not_before=None, now=0.0, waiting=False)
    q.add(req("e", 5), None, not_before=None, now=0.0, waiting=False)
    assert sorted(len(s) for s in q.shapes()) == [1, 1, 1, 2]


def test_an_emptied_shape_is_dropped() -> None:
    q = ReadyQueue()
    q.add(req("a", 1), None, not_before=None, now=0.0, waiting=False)
    q.remove("a")
    assert q.shapes() == [] and len(q) == 0


def test_a_backing_off_job_joins_its_shape_when_its_time_comes() -> None:
    q = ReadyQueue()
    q.add(req("a", 1), None, not_before=10.0, now=0.0, waiting=False)
    assert q.backing_off("a") and q.shapes() == []
    assert q.release_due(5.0, lambda _: None) == []
    assert q.release_due(10.0, lambda _: None) == ["a"]
    assert not q.backing_off("a") and q.shapes()[0].head() == "a"


def test_a_job_removed_while_backing_off_never_joins() -> None:
    q = ReadyQueue()
    q.add(req("a", 1), None, not_before=10.0, now=0.0, waiting=False)
    q.remove("a")
    assert q.release_due(20.0, lambda _: None) == []
    assert q.shapes() == []


def test_a_job_waiting_on_dependencies_joins_only_when_ready() -> None:
    q = ReadyQueue()
    q.add(req("a", 1), None, not_before=None, now=0.0, waiting=True)
    assert "a" in q and q.shapes() == []
    q.ready("a", None, not_before=None, now=0.0)
    assert q.shapes()[0].head() == "a"


def test_a_ready_job_still_backing_off_waits_for_its_time() -> None:
    q = ReadyQueue()
    q.add(req("a", 1), None, not_before=None, now=0.0, waiting=True)
    q.ready("a", None, not_before=30.0, now=10.0)
    assert q.shapes() == [] and q.backing_off("a")
    assert q.release_due(30.0, lambda _: None) == ["a"]


def test_sleeping_shapes_share_their_reason_and_wake_on_a_change() -> None:
    q = ReadyQueue()
    q.add(req("a", 1), None, not_before=None, now=0.0, waiting=False)
    q.add(req("b", 2), "etl", not_before=None, now=0.0, waiting=False)
    for shape in q.shapes():
        shape.sleep("no node fits the request")
    assert q.reason_of("a") == q.reason_of("b") == "no node fits the request"
    q.wake("etl")
    assert q.reason_of("b") is None and q.reason_of("a") is not None
    q.wake()
    assert q.reason_of("a") is None


def test_a_deep_queue_of_jobs_that_fit_nowhere_costs_a_pass_one_look(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c)
    deep = [
        submit(c, priority=10, constraints=Constraints(labels={"pool": "overnight"}))
        for _ in range(2000)
    ]
    c.place()
    c.take_changes()
    # The first of the shape was looked at and told why; the others share its reason.
    urgent = submit(c, priority=90)
    c.take_changes()
    assert c.place() != []
    changes = c.take_changes()
    assert urgent.state is JobState.ASSIGNED
    assert all(e.job_id not in {j.id for j in deep} for e in changes.events)
    assert c.shown(deep[-1]).reason == "0/1 nodes are available: 1 does not match the constraints"
    assert c.shown(deep[-1]).pending == {"labels": 1}


def test_a_pending_reason_is_told_once_per_change(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=2.0)
    job = submit(c, cpu=3.0)
    c.place()
    c.place()
    pending = [e for e in c.take_changes().events if e.type == "job.pending"]
    assert [(e.job_id, (e.data or {})["reason"]) for e in pending] == [
        (job.id, "0/1 nodes are available: 1 lacks CPU (needs 3 cores)")
    ]

"""The pure rules of preemption (which victims, where), fair share (usage decayed with
a half-life) and quotas, fed with plain values."""

from __future__ import annotations

import pytest

from common.models import Quota
from scheduler.fairshare import FairShare
from scheduler.placement import JobRequest, NodeView
from scheduler.preemption import Candidate, Choice, choose, victims_on
from scheduler.quotas import Running, beyond


def _node(node_id: str, *, free_cpu: float = 0.0, free_slots: int = 0, **kw: object) -> NodeView:
    fields: dict[str, object] = {
        "id": node_id,
        "free_cpu": free_cpu,
        "free_memory_mb": 8192,
        "free_gpus": 0,
        "free_slots": free_slots,
        "total_cpu": 8.0,
        "total_memory_mb": 16384,
        "labels": {},
    }
    fields.update(kw)
    return NodeView(**fields)  # type: ignore[arg-type]


def _running(job_id: str, priority: int, cpu: float = 2.0, started: float = 0.0) -> Candidate:
    return Candidate(job_id, priority, cpu, 1024, 0, started)


BIG = JobRequest(id="big", cpu=4.0, memory_mb=2048, priority=80)


def test_the_fewest_lowest_priority_victims_are_chosen() -> None:
    node = _node("n1")
    running = [_running("a", 10), _running("b", 20), _running("c", 30), _running("d", 90)]
    victims = victims_on(node, running, BIG)
    assert victims is not None and [v.job_id for v in victims] == ["a", "b"]


def test_a_victim_not_needed_after_all_is_reprieved() -> None:
    node = _node("n1")
    running = [_running("small", 10, cpu=1.0), _running("large", 20, cpu=4.0)]
    victims = victims_on(node, running, BIG)
    assert victims is not None and [v.job_id for v in victims] == ["large"]


def test_never_for_a_job_of_equal_or_lower_priority() -> None:
    node = _node("n1")
    assert victims_on(node, [_running("a", 80), _running("b", 80)], BIG) is None
    assert choose([(node, [_running("a", 90, cpu=8.0)])], BIG, now=0.0) is None


def test_the_node_with_the_lowest_victims_wins_then_the_fewest() -> None:
    low = _node("low")
    few = _node("few", free_cpu=2.0, free_slots=1)
    nodes = [
        (low, [_running("l1", 10), _running("l2", 10)]),
        (few, [_running("f1", 40)]),
    ]
    assert choose(nodes, BIG, now=0.0) == Choice("low", ("l1", "l2"))
    nodes[0] = (low, [_running("l1", 40), _running("l2", 40)])
    assert choose(nodes, BIG, now=0.0) == Choice("few", ("f1",))


def test_a_node_that_does_not_take_the_job_offers_no_victims() -> None:
    draining = _node("d", draining=True)
    labelled = _node("l", labels={"zone": "b"})
    job = JobRequest(id="j", cpu=1.0, memory_mb=512, priority=60, constraints={"zone": "a"})
    nodes = [(draining, [_running("x", 10)]), (labelled, [_running("y", 10)])]
    assert choose(nodes, job, now=0.0) is None


def test_among_equals_the_latest_started_is_stopped_first() -> None:
    node = _node("n1", free_cpu=2.0, free_slots=1)
    running = [_running("old", 10, started=100.0), _running("new", 10, started=200.0)]
    victims = victims_on(node, running, BIG)
    assert victims is not None and [v.job_id for v in victims] == ["new"]


def test_usage_halves_every_half_life_and_running_jobs_are_charged() -> None:
    share = FairShare(half_life_s=100.0, now=0.0)
    share.charge("alice", 400.0)
    share.decay_to(100.0)
    assert share.of("alice") == pytest.approx(200.0)
    share.tick(110.0, [("bob", 2.0), ("alice", 1.0)])
    assert share.of("bob") == pytest.approx(20.0)
    assert share.of("alice") == pytest.approx(200.0 * 0.5 ** (10 / 100) + 10.0)
    assert share.of("carol") == 0.0


def test_stored_usage_is_aged_over_the_time_the_scheduler_was_down() -> None:
    share = FairShare(half_life_s=60.0)
    share.load({"alice": 100.0, "gone": 1e-9}, at=1000.0, now=1060.0)
    assert share.of("alice") == pytest.approx(50.0) and "gone" not in share.usage


def test_a_quota_names_what_the_owner_runs_against_its_limit() -> None:
    quota = Quota(max_running_cpu=4.0, max_running_jobs=3)
    running = Running(cpu=3.0, memory_mb=512, jobs=2)
    assert beyond("ci", quota, running, 1.0, 256) is None
    assert beyond("ci", quota, running, 2.0, 256) == "quota: ci runs 3 of its 4 CPUs (needs 2)"
    running.add(1.0, 256)
    assert beyond("ci", quota, running, 0.5, 1) == "quota: ci runs 3 of its 3 jobs"
    memory = Quota(max_running_memory_mb=1024)
    assert beyond("ci", memory, Running(memory_mb=1000), 0.1, 100) == (
        "quota: ci runs 1000 of its 1024 MiB (needs 100 MiB)"
    )
    assert not Quota() and Quota(max_running_jobs=1)

"""Why a queued job waits: each node's first blocking cause, the counts by cause, and the
sentence made of them, on plain node objects and through the state's placement pass."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from common.models import Job
from common.states import JobState
from scheduler import placement
from scheduler.placement import (
    PENDING_KEYS,
    JobRequest,
    NodeView,
    Pass,
    blocker,
    fits,
    waiting_sentence,
)
from scheduler.state import State
from tests.unit.test_cluster import FakeClock, beat, new_cluster, register, report, submit
from tests.unit.test_following import Pair
from tests.unit.test_placement import job, node

NOW = 1_700_000_000.0


def counts(nodes: list[NodeView], req: JobRequest, offline: set[str] | None = None) -> dict:
    return Pass(nodes, now=NOW, rng=random.Random(1)).pending(req, (offline or set()).__contains__)


# --- one node: the first cause that applies ------------------------------------------------


def test_each_cause_is_named_when_it_is_the_only_one() -> None:
    req = job(cpu=2, memory_mb=512, gpus=1, constraints={"pool": "a"}, needs=("privileged",))
    ok = {"cpu": 4, "memory_mb": 1024, "gpus": 1, "labels": {"pool": "a"}}
    ok_allows: dict = {"allows": ("privileged",)}
    cases = {
        "draining": node(**ok, **ok_allows, draining=True),
        "cooldown": node(**ok, **ok_allows, cooldown_until=NOW + 5),
        "unhealthy": node(**ok, **ok_allows, healthy=False),
        "allow_list": node(**ok),
        "labels": node(**{**ok, "labels": {"pool": "b"}}, **ok_allows),
        "parallel_limit": node(**ok, **ok_allows, slots=0),
        "cpu": node(**{**ok, "cpu": 1.5}, **ok_allows),
        "memory": node(**{**ok, "memory_mb": 511}, **ok_allows),
        "gpus": node(**{**ok, "gpus": 0}, **ok_allows),
    }
    for cause, n in cases.items():
        assert blocker(n, req, NOW) == cause, cause
    fitting = node(**ok, **ok_allows)
    assert blocker(fitting, req, NOW) is None and fits(fitting, req, NOW)
    assert blocker(fitting, req, NOW, offline=True) == "offline"


def test_live_free_memory_below_the_request_counts_as_memory() -> None:
    n = node(memory_mb=4096, live_free_memory_mb=256)
    assert blocker(n, job(memory_mb=512), NOW) == "memory"


def test_a_cooldown_that_ended_does_not_block() -> None:
    assert blocker(node(cooldown_until=NOW - 1), job(), NOW) is None


def test_a_node_counts_once_under_its_first_cause() -> None:
    # Offline, draining, full and too small at once: offline it is.
    n = node(cpu=0.5, memory_mb=1, slots=0, healthy=False, draining=True, cooldown_until=NOW + 9)
    assert blocker(n, job(), NOW, offline=True) == "offline"
    assert blocker(n, job(), NOW) == "draining"
    n.draining = False
    assert blocker(n, job(), NOW) == "cooldown"
    n.cooldown_until = None
    assert blocker(n, job(), NOW) == "unhealthy"
    n.healthy = True
    assert blocker(n, job(), NOW) == "parallel_limit"
    n.free_slots = 1
    assert blocker(n, job(), NOW) == "cpu"
    n.free_cpu = 4
    assert blocker(n, job(memory_mb=512), NOW) == "memory"


# --- a pass: counts by cause and the sentence ----------------------------------------------


def test_the_counts_sum_to_the_nodes_and_the_sentence_lists_them_most_first() -> None:
    nodes = [
        node("full-1", slots=0),
        node("full-2", slots=0),
        node("small-1", memory_mb=256),
        node("small-2", memory_mb=256),
        node("drained", draining=True),
    ]
    req = job(memory_mb=512)
    pending = counts(nodes, req)
    assert pending == {"parallel_limit": 2, "memory": 2, "draining": 1}
    assert waiting_sentence(len(nodes), pending, req) == (
        "0/5 nodes are available: 2 at their parallel limit, 2 lack memory (needs 512 MiB), "
        "1 draining"
    )


def test_offline_nodes_are_told_apart_from_unhealthy_ones() -> None:
    nodes = [node("gone", healthy=False), node("late", healthy=False)]
    assert counts(nodes, job(), {"gone"}) == {"offline": 1, "unhealthy": 1}


def test_the_sentence_names_what_is_needed() -> None:
    req = job(cpu=1, gpus=2, needs=("privileged", "mount:/srv/data"))
    told = waiting_sentence(
        4, {"cpu": 1, "gpus": 2, "allow_list": 1, "reserved": 0, "labels": 0}, req
    )
    assert told == (
        "0/4 nodes are available: 2 lack GPUs (needs 2), 1 does not allow privileged mode, "
        "mounting /srv/data from the host (--allow privileged --allow mount:/srv/data), "
        "1 lacks CPU (needs 1 core)"
    )
    assert waiting_sentence(1, {"reserved": 1}, req) == (
        "0/1 nodes are available: 1 reserved for an earlier job"
    )
    assert waiting_sentence(2, {"labels": 2}, req).endswith("2 do not match the constraints")


def test_what_a_pass_placed_counts_against_the_nodes() -> None:
    # Two slots: the first two jobs take them, the third waits for a slot, not for room.
    nodes = [node("n1", slots=2)]
    one_pass = Pass(nodes, now=NOW, rng=random.Random(1), min_cpu=1.0, min_memory=1024)
    first, second, third = job("a"), job("b"), job("c")
    assert isinstance(one_pass.offer(first), placement.Decision)
    assert isinstance(one_pass.offer(second), placement.Decision)
    assert isinstance(one_pass.offer(third), str)
    assert one_pass.pending(third) == {"parallel_limit": 1}
    # A node filled below the smallest request leaves the pass; its real room is told.
    nodes = [node("n1", cpu=1.5, slots=4)]
    one_pass = Pass(nodes, now=NOW, rng=random.Random(1), min_cpu=1.0, min_memory=1024)
    assert isinstance(one_pass.offer(job("a")), placement.Decision)
    assert one_pass.pending(job("b")) == {"cpu": 1}


_nodes = st.lists(
    st.builds(
        NodeView,
        id=st.uuids().map(str),
        free_cpu=st.sampled_from([0.0, 0.5, 1.0, 2.0, 8.0]),
        free_memory_mb=st.sampled_from([0, 256, 1024, 4096]),
        free_gpus=st.sampled_from([0, 1, 2]),
        free_slots=st.sampled_from([0, 1, 2]),
        total_cpu=st.just(8.0),
        total_memory_mb=st.just(4096),
        labels=st.sampled_from([{}, {"zone": "a"}, {"zone": "b"}]),
        healthy=st.booleans(),
        draining=st.booleans(),
        cooldown_until=st.sampled_from([None, NOW - 1, NOW + 1]),
        live_free_memory_mb=st.sampled_from([None, 128, 8192]),
        allows=st.sampled_from([(), ("privileged",)]),
    ),
    max_size=8,
)
_jobs = st.builds(
    JobRequest,
    id=st.just("j"),
    cpu=st.sampled_from([0.5, 1.0, 4.0]),
    memory_mb=st.sampled_from([128, 1024, 4096]),
    gpus=st.sampled_from([0, 1]),
    constraints=st.sampled_from([{}, {"zone": "a"}]),
    needs=st.sampled_from([(), ("privileged",)]),
)


@settings(max_examples=300, deadline=None)
@given(_nodes, st.lists(_jobs, min_size=1, max_size=6), st.sets(st.integers(0, 7)))
def test_a_pass_counts_what_blocker_says_node_by_node(
    nodes: list[NodeView], reqs: list[JobRequest], offline_at: set[int]
) -> None:
    """Before and after the pass places jobs: every job that fits nowhere has each node
    counted once, under what ``blocker`` says of the node as the pass left it."""
    # An offline node is never healthy: its view says only that.
    offline = {n.id for i, n in enumerate(nodes) if i in offline_at and not n.healthy}
    one_pass = Pass(
        nodes,
        now=NOW,
        rng=random.Random(3),
        min_cpu=min(r.cpu for r in reqs),
        min_memory=min(r.memory_mb for r in reqs),
    )
    left = {n.id: NodeView(**{f: getattr(n, f) for f in NodeView.__slots__}) for n in nodes}
    for i, req in enumerate(reqs):
        req = JobRequest(**{**{f: getattr(req, f) for f in JobRequest.__slots__}, "id": f"j{i}"})
        outcome = one_pass.offer(req)
        if isinstance(outcome, placement.Decision):
            n = left[outcome.node_id]
            n.free_cpu -= req.cpu
            n.free_memory_mb -= req.memory_mb
            if n.live_free_memory_mb is not None:
                n.live_free_memory_mb -= req.memory_mb
            n.free_gpus -= req.gpus
            n.free_slots -= 1
            continue
        pending = one_pass.pending(req, offline.__contains__)
        expected: dict[str, int] = {}
        for n in left.values():
            why = blocker(n, req, NOW, offline=n.id in offline)
            assert why is not None
            expected[why] = expected.get(why, 0) + 1
        assert pending == expected
        assert sum(pending.values()) == len(nodes)
        assert set(pending) <= set(PENDING_KEYS)


# --- the state: reason, pending and the job.pending event ----------------------------------


def pending_events(c: State, j: Job) -> list[dict]:
    return [
        e.data or {}
        for e in c.take_changes().events
        if e.type == "job.pending" and e.job_id == j.id
    ]


def test_a_job_behind_full_slots_says_parallel_limit_not_no_fit(clock: FakeClock) -> None:
    # Without reservations, so that the first job's own reason is the sentence too.
    c = new_cluster(clock, reservations=0)
    register(c, "a", max_parallel=1)
    register(c, "b", max_parallel=1)
    running = [submit(c), submit(c)]
    c.place()
    assert all(j.state is JobState.ASSIGNED for j in running)
    waiting = submit(c)
    c.take_changes()
    c.place()
    why = "0/2 nodes are available: 2 at their parallel limit"
    assert waiting.reason == why and waiting.pending == {"parallel_limit": 2}
    assert pending_events(c, waiting) == [{"reason": why, "pending": {"parallel_limit": 2}}]
    # The jobs behind it share the reason and the counts.
    behind = submit(c)
    c.place()
    shown = c.shown(behind)
    assert (shown.reason, shown.pending) == (why, {"parallel_limit": 2})


def test_pending_is_cleared_when_the_job_is_assigned(clock: FakeClock) -> None:
    c = new_cluster(clock)
    node = register(c, max_parallel=1)
    first = submit(c)
    c.place()
    waiting = submit(c)
    c.place()
    assert waiting.pending == {"parallel_limit": 1}
    report(c, first, "running")
    report(c, first, "completed", exit_code=0)
    beat(c, node)
    c.place()
    assert waiting.state is JobState.ASSIGNED
    assert waiting.pending is None and waiting.reason is None


def test_reasons_that_are_not_about_nodes_carry_no_counts(clock: FakeClock) -> None:
    c = new_cluster(clock)
    alone = submit(c)
    c.place()
    assert alone.reason == placement.REASON_NO_ELIGIBLE and alone.pending is None
    register(c, max_parallel=8)
    grouped = [submit(c, group="etl", group_max_concurrent=1) for _ in range(2)]
    c.place()
    assert grouped[1].reason is not None and grouped[1].reason.startswith("group_limit")
    assert grouped[1].pending is None


def test_a_node_reserved_for_an_earlier_job_is_counted_as_reserved(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, cpu=4, max_parallel=8)
    submit(c, cpu=3, expected_runtime_s=60)
    c.place()
    big = submit(c, cpu=4)
    later = submit(c, cpu=1)
    c.place()
    assert big.pending == {"cpu": 1}
    assert big.reason is not None and big.reason.startswith("reserved: node n1 from ")
    assert later.state is JobState.QUEUED
    assert later.reason == "0/1 nodes are available: 1 reserved for an earlier job"
    assert later.pending == {"reserved": 1}


def test_a_standby_shows_the_counts_of_the_jobs_behind_the_first_too(clock: FakeClock) -> None:
    pair = Pair(clock)
    c = pair.leader
    register(c, "small", cpu=1.0, memory_mb=512)
    big = [submit(c, cpu=8.0) for _ in range(3)]
    c.place()
    pair.commit()
    last = pair.standby.shown(pair.standby.jobs[big[-1].id])
    assert last.reason == "0/1 nodes are available: 1 lacks CPU (needs 8 cores)"
    assert last.pending == {"cpu": 1} == c.shown(big[-1]).pending

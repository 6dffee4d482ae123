"""Sharing the cluster between owners, driven through the state with a fake clock: the
fair-share order, quotas and preemption."""

from __future__ import annotations

from typing import Any

import pytest

from common.codec import decode, encode
from common.models import Job, JobResources, JobSpec, Owner, Quota
from common.states import JobState
from scheduler.state import State
from scheduler.tokens import TokenRow
from tests.unit.test_cluster import (
    FakeClock,
    assert_no_overcommit,
    loaded_from,
    new_cluster,
    register,
    report,
)

ADMIN = TokenRow("d" * 64, "admin", "root")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _submit(c: State, owner: str, cpu: float = 1.0, **fields: Any) -> Job:
    spec = JobSpec(image="busybox", resources=JobResources(cpu=cpu, memory_mb=64), **fields)
    job, _ = c.submit(spec, submitted_by=owner)
    return job


def _started(jobs: list[Job]) -> list[str]:
    return [j.submitted_by or "" for j in jobs if j.state is not JobState.QUEUED]


# --- fair share ----------------------------------------------------------------------


def test_one_owners_big_backlog_does_not_starve_another_owners_single_job(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, cpu=4.0, max_parallel=2)
    flood = [_submit(c, "flood") for _ in range(50)]
    c.place()
    assert _started(flood) == ["flood", "flood"]
    single = _submit(c, "single")
    c.place()
    assert single.state is JobState.QUEUED  # no room yet
    report(c, flood[0], "running")
    report(c, flood[0], "completed", exit_code=0)
    c.place()
    # The freed slot goes to the owner who used least, not to the next job in line.
    assert single.state is JobState.ASSIGNED
    assert flood[2].state is JobState.QUEUED


def test_owners_are_interleaved_within_a_pass(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, cpu=8.0, max_parallel=4)
    a = [_submit(c, "a") for _ in range(4)]
    b = [_submit(c, "b") for _ in range(4)]
    c.place()
    assert sorted(_started(a + b)) == ["a", "a", "b", "b"]


def test_fifo_order_serves_the_queue_by_submission(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6, queue_order="fifo")
    register(c, cpu=8.0, max_parallel=4)
    a = [_submit(c, "a") for _ in range(4)]
    b = [_submit(c, "b") for _ in range(4)]
    c.place()
    assert _started(a + b) == ["a"] * 4


def test_priority_still_comes_before_fair_share(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, cpu=8.0, max_parallel=1)
    c.fair.charge("heavy", 1e6)
    light = _submit(c, "light", priority=10)
    heavy = _submit(c, "heavy", priority=90)
    c.place()
    assert heavy.state is JobState.ASSIGNED and light.state is JobState.QUEUED


def test_usage_accrues_while_jobs_run_and_decays(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6, fair_share_half_life_s=100.0)
    register(c, cpu=8.0)
    job = _submit(c, "alice", cpu=2.0)
    c.place()
    report(c, job, "running")
    clock.advance(10)
    c.check_liveness()
    assert c.fair.of("alice") == pytest.approx(2.0 + 2.0 * 10, rel=0.1)
    report(c, job, "completed", exit_code=0)
    before = c.fair.of("alice")
    clock.advance(100)
    c.check_liveness()
    assert c.fair.of("alice") == pytest.approx(before / 2)


def test_usage_survives_a_restart(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6, fair_share_half_life_s=3600.0)
    register(c)
    job = _submit(c, "alice", cpu=4.0)
    c.place()
    report(c, job, "running")
    clock.advance(31)
    c.check_liveness()  # past the save interval: the usage is in the change set
    saved = c.changes.owners["alice"]
    assert saved.usage_cpu_s == pytest.approx(c.fair.of("alice"))
    loaded = loaded_from(c)
    loaded.owners = [decode(encode(saved), Owner)]
    restarted = new_cluster(clock, node_ttl_s=1e6, fair_share_half_life_s=3600.0)
    restarted.load(loaded)
    assert restarted.fair.of("alice") == pytest.approx(saved.usage_cpu_s)
    assert restarted.running_by["alice"].jobs == 1


# --- quotas --------------------------------------------------------------------------


def test_jobs_past_their_owners_quota_wait_with_reason_quota(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, cpu=16.0, max_parallel=8)
    c.set_quota("ci", Quota(max_running_cpu=2.0), by=ADMIN)
    jobs = [_submit(c, "ci") for _ in range(3)]
    other = _submit(c, "dev")
    c.place()
    assert [j.state for j in jobs] == [JobState.ASSIGNED, JobState.ASSIGNED, JobState.QUEUED]
    assert jobs[2].reason == "quota: ci runs 2 of its 2 CPUs (needs 1)"
    assert other.state is JobState.ASSIGNED  # others are not held back
    report(c, jobs[0], "running")
    report(c, jobs[0], "completed", exit_code=0)
    c.place()
    assert jobs[2].state is JobState.ASSIGNED


def test_raising_a_quota_lets_waiting_jobs_start(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, cpu=16.0, max_parallel=8)
    c.set_quota("ci", Quota(max_running_jobs=1), by=ADMIN)
    first, second = _submit(c, "ci"), _submit(c, "ci")
    c.place()
    assert second.reason == "quota: ci runs 1 of its 1 jobs"
    c.set_quota("ci", Quota(max_running_jobs=2), by=ADMIN)
    c.place()
    assert first.state is second.state is JobState.ASSIGNED
    assert c.owner_status("ci").running_jobs == 2
    assert c.changes.owners["ci"].quota == Quota(max_running_jobs=2)


# --- preemption ----------------------------------------------------------------------


def test_a_high_priority_job_preempts_the_lowest_preemptible_ones(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    node = register(c, cpu=4.0, max_parallel=4)
    low = _submit(c, "batch", cpu=2.0, priority=10, preemptible=True)
    mid = _submit(c, "batch", cpu=2.0, priority=20, preemptible=True)
    c.place()
    for job in (low, mid):
        report(c, job, "running")
    urgent = _submit(c, "ops", cpu=2.0, priority=90)
    c.place()
    assert low.state is JobState.QUEUED and low.attempt == 2 and low.requeues == 1
    assert low.reason == f"requeued 1/3: preempted by job {urgent.id} (priority 90)"
    assert mid.state is JobState.RUNNING
    assert urgent.state is JobState.QUEUED
    assert urgent.reason == f"preempting: stopping job(s) {low.id} on node {node.name}"
    preempted = [e for e in c.changes.events if e.type == "job.preempted"]
    assert [(e.job_id, (e.data or {})["by"]) for e in preempted] == [(low.id, urgent.id)]
    # Another pass while the victim stops preempts no one else.
    c.place()
    assert mid.state is JobState.RUNNING
    # The victim's agent confirms it stopped: its room goes to the urgent job.
    report(c, low, "cancelled", node=node, attempt=1)
    c.place()
    assert urgent.state is JobState.ASSIGNED and low.state is JobState.QUEUED
    assert_no_overcommit(c)


def test_no_preemption_for_equal_priority_nor_of_jobs_not_preemptible(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    register(c, cpu=2.0, max_parallel=2)
    fixed = _submit(c, "a", cpu=2.0, priority=10)
    c.place()
    equal = _submit(c, "b", cpu=2.0, priority=10, preemptible=True)
    higher = _submit(c, "c", cpu=2.0, priority=50)
    c.place()
    assert fixed.state is JobState.ASSIGNED and fixed.attempt == 1
    assert higher.state is JobState.QUEUED and not (higher.reason or "").startswith("preempt")
    assert equal.state is JobState.QUEUED


def test_preempted_jobs_do_not_preempt_back(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6)
    node = register(c, cpu=2.0, max_parallel=2)
    victim = _submit(c, "batch", cpu=2.0, priority=10, preemptible=True)
    c.place()
    report(c, victim, "running")
    urgent = _submit(c, "ops", cpu=2.0, priority=90, preemptible=True)
    c.place()
    report(c, victim, "cancelled", node=node, attempt=1)
    for _ in range(5):
        c.place()
        clock.advance(1)
    assert urgent.state is JobState.ASSIGNED and urgent.attempt == 1
    assert victim.state is JobState.QUEUED and victim.requeues == 1
    assert victim.reason is not None and not victim.reason.startswith("preempting")


def test_preemption_can_be_turned_off(clock: FakeClock) -> None:
    c = new_cluster(clock, node_ttl_s=1e6, preemption=False)
    register(c, cpu=2.0, max_parallel=2)
    victim = _submit(c, "batch", cpu=2.0, priority=10, preemptible=True)
    c.place()
    urgent = _submit(c, "ops", cpu=2.0, priority=90)
    c.place()
    assert victim.state is JobState.ASSIGNED and urgent.state is JobState.QUEUED

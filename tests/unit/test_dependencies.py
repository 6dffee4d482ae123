"""The incremental dependency bookkeeping: counts of unmet dependencies and the reverse
index, kept as dependencies end, rebuilt on a restart, and bounded reasons; and the
per-token counts the budgets read (queued jobs, stored spec bytes)."""

from __future__ import annotations

from common.states import JobState
from scheduler.archive import CODES
from scheduler.dependencies import MAX_REASON, DependencyIndex
from scheduler.limits import spec_bytes
from scheduler.state import State
from scheduler.store.base import Loaded
from tests.unit.test_cluster import FakeClock, loaded_from, new_cluster, register, submit
from tests.unit.test_queue import finish


def _states(**states: JobState) -> dict[str, JobState]:
    return dict(states)


def test_a_job_is_ready_once_its_last_distinct_dependency_completes() -> None:
    states = _states(a=JobState.QUEUED, b=JobState.RUNNING, c=JobState.COMPLETED)
    idx = DependencyIndex()
    idx.track("j", ["a", "b", "a", "c"], states.get)
    assert idx.waits("j") and idx.unmet("j") == 2
    assert idx.dependents("a") == ["j"] and idx.dependents("c") == []
    states["a"] = JobState.COMPLETED
    assert idx.ended("a", JobState.COMPLETED) == []
    assert idx.unmet("j") == 1 and idx.dependents("a") == []
    states["b"] = JobState.COMPLETED
    assert idx.ended("b", JobState.COMPLETED) == ["j"]
    assert not idx.waits("j") and len(idx) == 0


def test_a_failed_dependency_dooms_its_dependents_until_judged() -> None:
    states = _states(a=JobState.QUEUED)
    idx = DependencyIndex()
    idx.track("j", ["a"], states.get)
    states["a"] = JobState.FAILED
    idx.ended("a", JobState.FAILED)
    assert idx.take_doomed() == ["j"] and idx.take_doomed() == []
    # Retried meanwhile: still listed, so its completion still counts.
    states["a"] = JobState.COMPLETED
    assert idx.ended("a", JobState.COMPLETED) == ["j"]


def test_a_retried_dependent_is_listed_once_and_counted_again() -> None:
    states = _states(a=JobState.QUEUED, b=JobState.QUEUED)
    idx = DependencyIndex()
    idx.track("j", ["a", "b"], states.get)
    idx.untrack("j")  # cancelled while waiting
    states["a"] = JobState.COMPLETED
    assert idx.ended("a", JobState.COMPLETED) == []
    idx.track("j", ["a", "b"], states.get)  # retried
    assert idx.unmet("j") == 1 and idx.dependents("b") == ["j"]
    states["b"] = JobState.COMPLETED
    assert idx.ended("b", JobState.COMPLETED) == ["j"]


def test_the_reason_is_bounded_and_names_the_first_unmet_dependencies() -> None:
    deps = [f"{i:064x}" for i in range(1000)]
    states = dict.fromkeys(deps, JobState.QUEUED)
    idx = DependencyIndex()
    idx.track("j", deps, states.get)
    reason = idx.reason("j", deps, states.get)
    assert reason == f"waiting_on: {deps[0]}, {deps[1]}, {deps[2]} and 997 more"
    assert len(reason.encode()) <= MAX_REASON
    for dep in deps[:500]:
        states[dep] = JobState.COMPLETED
        idx.ended(dep, JobState.COMPLETED)
    assert idx.reason("j", deps, states.get).endswith(f"{deps[502]} and 497 more")


def _restart(c: State, clock: FakeClock) -> State:
    """A restart: live jobs as records, ended ones as the archive's documents."""
    c.take_changes()
    loaded = loaded_from(c)
    loaded = Loaded(
        jobs=loaded.jobs,
        nodes=loaded.nodes,
        idempotency=loaded.idempotency,
        tokens=loaded.tokens,
        last_index=loaded.last_index,
        log_ends=loaded.log_ends,
        archived=[(j, c.archive.state(j), c.archive.stored(j)) for j in c.archive],
    )
    restarted = new_cluster(clock)
    restarted.load(loaded)
    return restarted


def test_dependencies_are_counted_again_after_a_restart(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, max_parallel=2)
    first, second = submit(c), submit(c)
    # One of its (distinct) dependencies completed before the restart.
    join = submit(c, depends_on=[first.id, second.id, first.id])
    c.place()
    finish(c, first)
    c.place()
    assert join.state is JobState.QUEUED and c.deps.unmet(join.id) == 1
    restarted = _restart(c, clock)
    assert restarted.deps.unmet(join.id) == 1
    assert restarted.deps.dependents(second.id) == [join.id]
    live_second = restarted.jobs[second.id]
    restarted.place()
    assert restarted.jobs[join.id].reason == f"waiting_on: {second.id}"
    finish(restarted, live_second)
    restarted.place()
    assert restarted.jobs[join.id].state is JobState.ASSIGNED


def test_a_pass_does_not_look_at_jobs_waiting_on_dependencies(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, max_parallel=1)
    deps = [submit(c) for _ in range(3)]
    waiting = [submit(c, depends_on=[d.id for d in deps]) for _ in range(50)]
    state_of = c.state_of
    looked: list[str] = []

    def counting(job_id: str) -> JobState | None:
        looked.append(job_id)
        return state_of(job_id)

    c.state_of = counting  # type: ignore[method-assign]
    c.place()  # the first pass writes each waiting job's reason once
    looked.clear()
    for _ in range(5):
        c.place()
    assert looked == []
    assert all(w.reason == f"waiting_on: {deps[0].id}, {deps[1].id}, {deps[2].id}" for w in waiting)


def test_queued_jobs_and_spec_bytes_are_counted_per_submitter(clock: FakeClock) -> None:
    c = new_cluster(clock)
    register(c, max_parallel=1)
    jobs = [submit(c, env={"PAD": "x" * 100}) for _ in range(3)]
    size = spec_bytes(jobs[0].spec)
    assert c.queued_by == {"alice": 3}
    assert c.spec_bytes_of("alice") == 3 * size
    c.place()
    assert c.queued_by == {"alice": 2}
    c.cancel(jobs[1].id, by="alice")
    assert c.queued_by == {"alice": 1}
    # An ended job still holds its bytes until retention deletes it, also across a
    # restart (read from the archive's documents).
    restarted = _restart(c, clock)
    assert restarted.queued_by == {"alice": 1}
    assert restarted.spec_bytes_of("alice") == 3 * size
    assert CODES[JobState.CANCELLED] == restarted.archive.stored(jobs[1].id)[:1]
    gone = restarted.forget([jobs[1].id])
    assert [j.id for j in gone] == [jobs[1].id]
    assert restarted.spec_bytes_of("alice") == 2 * size


def test_a_dependency_retried_before_the_pass_keeps_its_dependent_waiting(
    clock: FakeClock,
) -> None:
    c = new_cluster(clock)
    register(c, max_parallel=1)
    first = submit(c)
    second = submit(c, depends_on=[first.id])
    c.place()
    finish(c, first, "failed", exit_code=1)
    c.take_changes()
    c.retry(first.id, by="alice")  # before any pass judged the dependent
    c.place()
    assert second.state is JobState.QUEUED
    assert second.reason == f"waiting_on: {first.id}"
    finish(c, c.jobs[first.id])
    c.place()
    assert second.state is JobState.ASSIGNED

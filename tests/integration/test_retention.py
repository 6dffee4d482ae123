"""Retention deletes ended jobs past their time, with their events and logs, and
nothing else; the deletion survives a restart."""

from __future__ import annotations

from pathlib import Path

from common.models import (
    HeartbeatRequest,
    JobResources,
    JobSpec,
    RegisterRequest,
    Report,
    Resources,
    RunningAttempt,
)
from common.states import JobState
from scheduler.config import SchedulerConfig
from scheduler.service import Service
from scheduler.state import State
from scheduler.store.postgres import PostgresStore
from scheduler.store.sqlite import SQLiteStore
from tests.support import SchedulerProcess, wait_until
from tests.unit.test_cluster import FakeClock

DAY = 86400.0


def _service(state_dir: Path, clock: FakeClock) -> Service:
    """A service on the store of the run: SQLite in ``state_dir``, or the PostgreSQL
    database of ``state_dir``."""
    dsn = SchedulerProcess.databases(state_dir) if SchedulerProcess.databases else ""
    config = SchedulerConfig(
        state_dir=state_dir, job_retention_s=7 * DAY, restart_grace_s=0, store=dsn
    )
    store = PostgresStore(dsn) if dsn else SQLiteStore(state_dir / "berth.db")
    return Service(config, store, State(config, clock=clock))


async def _started(svc: Service) -> Service:
    """Started, and leading (on PostgreSQL it takes the lead first)."""
    await svc.start()
    await wait_until(svc.leading, timeout=20)
    return svc


async def test_ended_jobs_past_retention_are_deleted_and_nothing_else(tmp_path: Path) -> None:
    clock = FakeClock()
    svc = await _started(_service(tmp_path, clock))
    c = svc.state
    node, _ = c.register(
        RegisterRequest(name="n", capacity=Resources(cpu=8, memory_mb=8192), max_parallel=8)
    )
    spec = JobSpec(image="busybox", resources=JobResources(cpu=1, memory_mb=64), timeout_s=20 * DAY)
    old_done, _ = c.submit(spec, submitted_by="t", idempotency_key="k-old")
    running, _ = c.submit(spec, submitted_by="t")
    c.place()
    for job in (old_done, running):
        c.report(node.id, job.id, Report(attempt=1, state="running"))
    c.append_log(node.id, old_done.id, 1, 0, b"bye\n")
    c.report(node.id, old_done.id, Report(attempt=1, state="completed", exit_code=0))
    await svc.commit()
    alive = HeartbeatRequest(running=[RunningAttempt(job_id=running.id, attempt=1)])

    clock.advance(6 * DAY)
    c.heartbeat(node.id, alive)
    recent, _ = c.submit(spec, submitted_by="t")
    c.cancel(recent.id, by="t")
    await svc.commit()
    assert await svc.expire_jobs() == 0

    clock.advance(1.5 * DAY)
    c.heartbeat(node.id, alive)
    assert await svc.expire_jobs() == 1
    assert c.state_of(old_done.id) is None
    assert c.state_of(recent.id) is JobState.CANCELLED
    assert c.jobs[running.id].state is JobState.RUNNING  # running for 7.5 days: untouched
    assert c.counts[JobState.COMPLETED] == 0
    assert "t:k-old" not in c.idempotency
    assert await svc.store.read_events(0, 1000, old_done.id) == []
    assert await svc.store.read_log(old_done.id, 1, 0, 100) == b""
    await svc.stop()

    # After a restart the deleted job stays deleted.
    again = await _started(_service(tmp_path, clock))
    assert again.state.state_of(old_done.id) is None
    assert again.state.state_of(recent.id) is JobState.CANCELLED
    assert again.state.state_of(running.id) is JobState.RUNNING
    await again.stop()

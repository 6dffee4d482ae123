"""An agent with running jobs is SIGKILLed; its jobs move to the other agent.

Two real `berth agent --executor process` processes on a real scheduler with a short
node TTL. The jobs (``sleep 5``) are placed while only the first agent is up; the
second joins, the first is killed with SIGKILL. Once the first node's heartbeats are
overdue it goes offline, its jobs are requeued as lost and complete on the second
agent: each job's history shows attempt 1 lost on the killed node and attempt 2
completed on the other.
"""

from __future__ import annotations

import time
from pathlib import Path

from common.client import BerthClient
from common.models import Constraints, Job, JobResources, JobSpec
from tests.chaos.conftest import Figures
from tests.e2e.conftest import AgentProcess, node_named, poll, wait_for_nodes
from tests.support import SchedulerProcess

JOBS = 3
#: TTL + grace of a silent node, in seconds (the scheduler's --node-ttl)
NODE_TTL = "3"


def _agent(sched: SchedulerProcess, root: Path, name: str) -> AgentProcess:
    return AgentProcess(
        sched,
        name,
        root / name,
        "--executor",
        "process",
        "--max-parallel",
        str(JOBS),
        "--label",
        "pool=chaos",
    )


def _sleeper(i: int) -> JobSpec:
    return JobSpec(
        image="berth-test/busybox:1",
        name=f"sleeper-{i}",
        command=["sleep", "5"],
        resources=JobResources(cpu=0.1, memory_mb=32),
        constraints=Constraints(labels={"pool": "chaos"}),
        max_retries=2,
        retry_delay_s=0.2,
        timeout_s=60,
    )


async def test_killed_agents_running_jobs_are_requeued_and_complete_on_the_other(
    tmp_path: Path, figures: Figures
) -> None:
    sched = SchedulerProcess(
        tmp_path / "state",
        "--heartbeat-interval",
        "0.5",
        "--node-ttl",
        NODE_TTL,
        "--restart-grace",
        NODE_TTL,
    ).start()
    first = _agent(sched, tmp_path, "first")
    second = _agent(sched, tmp_path, "second")
    try:
        async with BerthClient(sched.url, sched.admin_token, timeout=30) as api:
            first.start()
            await wait_for_nodes(api, ["first"])
            jobs = [await api.submit_job(_sleeper(i)) for i in range(JOBS)]
            figures.jobs = figures.acknowledged = len(jobs)

            async def all_running() -> bool:
                got = [await api.get_job(j.id) for j in jobs]
                return all(j.state == "running" for j in got)

            await poll(all_running, 30, what="every job running on the first agent")
            second.start()
            await wait_for_nodes(api, ["second"])
            killed = await node_named(api, "first")
            other = await node_named(api, "second")

            first.kill()
            figures.faults = 1
            t_kill = time.monotonic()

            async def requeued() -> bool:
                got = [await api.get_job(j.id) for j in jobs]
                return all(j.attempt == 2 and j.node_id == other.id for j in got)

            await poll(requeued, 30, interval=0.1, what="the jobs to move to the second agent")
            figures.extra["kill_to_reassigned_seconds"] = round(time.monotonic() - t_kill, 2)

            async def ended() -> list[Job] | None:
                got = [await api.get_job(j.id) for j in jobs]
                return got if all(j.state in ("completed", "failed") for j in got) else None

            done: list[Job] = await poll(ended, 40, interval=0.2, what="the jobs to end")
            figures.extra["kill_to_completed_seconds"] = round(time.monotonic() - t_kill, 2)
            figures.terminal = len(done)
            figures.losses = sum(1 for j in done if j.state != "completed")
            figures.duplicates = sum(
                1 for j in done if any(a.state == "completed" for a in j.attempts)
            )
            killed_node = await node_named(api, "first")
            figures.extra["killed_node_state"] = killed_node.state
            for job in done:
                assert (job.state, job.attempt, job.node_id) == ("completed", 2, other.id), job
                assert len(job.attempts) == 1, job.attempts
                (lost,) = job.attempts
                assert (lost.attempt, lost.node_id, lost.state) == (1, killed.id, "failed")
                assert lost.error is not None and "lost" in lost.error, lost.error
            assert killed_node.state == "offline"
    finally:
        first.kill()
        second.kill()
        sched.kill()

"""The agent under stress: killed and restarted, cut off from its scheduler, shut down."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from common.client import BerthClient
from tests.e2e.conftest import (
    AgentProcess,
    Cluster,
    containers,
    job_logs,
    node_named,
    poll,
    spec,
    wait_done,
    wait_for_nodes,
    wait_state,
)
from tests.support import SchedulerProcess, free_port

pytestmark = pytest.mark.docker


async def _first_output(api: BerthClient, cluster: Cluster, job_id: str, text: bytes) -> None:
    async def seen() -> bool:
        return text in await job_logs(api, cluster.sched, await api.get_job(job_id))

    await poll(seen, 30, what=f"{text!r} in the output of {job_id}")


async def test_killed_agent_readopts_its_container_and_the_job_completes_once(
    api: BerthClient, cluster: Cluster
) -> None:
    agent = cluster.add_agent(
        "restart", "--executor", "docker", "--max-parallel", "1", "--label", "pool=restart"
    )
    await wait_for_nodes(api, ["restart"])
    node = await node_named(api, "restart")
    job = await api.submit_job(spec("echo before; sleep 8; echo after", "restart"))
    await wait_state(api, job.id, {"running"})
    await _first_output(api, cluster, job.id, b"before\n")

    agent.kill()
    assert containers(f"berth.job={job.id}"), "the container must outlive its agent"
    agent.start()

    done = await wait_done(api, job.id, timeout=60)
    assert (done.state, done.exit_code, done.attempt) == ("completed", 0, 1)
    assert not done.attempts
    assert await job_logs(api, cluster.sched, done) == b"before\nafter\n"
    assert (await node_named(api, "restart")).id == node.id
    await poll(lambda: not containers(f"berth.job={job.id}", all_states=True), 20, what="removal")
    assert "re-adopted" in agent.log_text()


async def test_container_of_a_job_cancelled_while_its_agent_was_down_is_removed(
    api: BerthClient, cluster: Cluster
) -> None:
    agent = cluster.agents.get("restart") or cluster.add_agent(
        "restart", "--executor", "docker", "--max-parallel", "1", "--label", "pool=restart"
    )
    await wait_for_nodes(api, ["restart"])
    job = await api.submit_job(spec("echo started; sleep 60", "restart"))
    await wait_state(api, job.id, {"running"})
    agent.kill()
    await api.cancel_job(job.id)
    assert containers(f"berth.job={job.id}")
    agent.start()
    await poll(lambda: not containers(f"berth.job={job.id}", all_states=True), 40, what="removal")
    assert (await api.get_job(job.id)).state == "cancelled"


@pytest.mark.parametrize("outage", ["stopped", "restarted"])
async def test_results_arrive_after_the_scheduler_comes_back(
    tmp_path: Path, docker_image: str, outage: str
) -> None:
    """The scheduler is frozen (SIGSTOP: calls hang) or killed and started again on
    its state dir (calls are refused) for about 20 s while jobs finish."""
    sched = SchedulerProcess(
        tmp_path / "scheduler", "--heartbeat-interval", "0.5", "--node-ttl", "60"
    ).start()
    agent = AgentProcess(
        sched,
        "cutoff",
        tmp_path / "cutoff",
        "--executor",
        "docker",
        "--max-parallel",
        "2",
        "--label",
        "pool=cutoff",
    ).start()
    try:
        async with BerthClient(sched.url, sched.admin_token) as api:
            await wait_for_nodes(api, ["cutoff"])
            jobs = [
                await api.submit_job(
                    spec(f"echo job-{n}; sleep 3; echo end-{n}; exit {n}", "cutoff")
                )
                for n in (0, 4)
            ]
            for job in jobs:
                await wait_state(api, job.id, {"running"})
            assert sched.proc is not None
            if outage == "stopped":
                sched.proc.send_signal(signal.SIGSTOP)
            else:
                sched.kill()
            try:
                # The jobs finish while the scheduler is away; their results wait on disk.
                for job in jobs:
                    await poll(
                        lambda j=job.id: not containers(f"berth.job={j}"), 30, what="the exit"
                    )
                reports = tmp_path / "cutoff" / "reports"
                await poll(lambda: len(list(reports.glob("*.json"))) == 2, 30, what="saved results")
                # Keep the scheduler away for about 20 s in all (an outage, not a wait).
                await asyncio.sleep(12)
            finally:
                if outage == "stopped":
                    sched.proc.send_signal(signal.SIGCONT)
                else:
                    sched.start()
            first = await wait_done(api, jobs[0].id, timeout=60)
            second = await wait_done(api, jobs[1].id, timeout=60)
            assert (first.state, first.exit_code) == ("completed", 0)
            assert (second.state, second.exit_code, second.error) == ("failed", 4, "exit code 4")
            assert await job_logs(api, sched, first) == b"job-0\nend-0\n"
            assert await job_logs(api, sched, second) == b"job-4\nend-4\n"
            await poll(lambda: not list(reports.glob("*.json")), 30, what="the results to be sent")
            node = await node_named(api, "cutoff")
            assert node.state in ("idle", "busy")
    finally:
        agent.kill()
        sched.kill()


async def test_first_sigterm_drains_and_the_second_cancels(
    api: BerthClient, cluster: Cluster
) -> None:
    agent = cluster.add_agent(
        "drain", "--executor", "docker", "--max-parallel", "2", "--label", "pool=drain"
    )
    await wait_for_nodes(api, ["drain"])
    running = await api.submit_job(spec("echo working; sleep 4; echo finished", "drain"))
    await wait_state(api, running.id, {"running"})
    agent.signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.wait, 60) == 0
    done = await api.get_job(running.id)
    assert (done.state, done.exit_code) == ("completed", 0)
    assert await job_logs(api, cluster.sched, done) == b"working\nfinished\n"

    seen = len(agent.log_text())
    agent.start()
    await wait_for_nodes(api, ["drain"])
    late = await api.submit_job(spec("echo started; sleep 60", "drain"))
    await wait_state(api, late.id, {"running"})
    agent.signal(signal.SIGTERM)
    # Signals sent at once may merge into one: send the second after the first is seen.
    await poll(
        lambda: "draining" in agent.log_text()[seen:], 10, what="the agent to start draining"
    )
    agent.signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.wait, 60) == 0
    cancelled = await api.get_job(late.id)
    assert cancelled.state == "cancelled"
    assert not containers(f"berth.job={late.id}", all_states=True)


async def test_agent_fails_over_to_the_next_scheduler_url(
    api: BerthClient, cluster: Cluster
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    agent = AgentProcess(
        cluster.sched,
        "failover",
        cluster.root / "failover",
        "--executor",
        "docker",
        "--max-parallel",
        "1",
        "--label",
        "pool=failover",
        scheduler_url=f"{dead},{cluster.sched.url}",
    ).start()
    cluster.agents["failover"] = agent
    await wait_for_nodes(api, ["failover"])
    job = await api.submit_job(spec("echo via the second url", "failover"))
    done = await wait_done(api, job.id)
    assert done.state == "completed"
    assert await job_logs(api, cluster.sched, done) == b"via the second url\n"


async def test_agent_without_a_working_dockerd_reports_its_executor_broken(
    api: BerthClient, cluster: Cluster, tmp_path: Path
) -> None:
    agent = AgentProcess(
        cluster.sched,
        "nodocker",
        cluster.root / "nodocker",
        "--executor",
        "docker",
        "--label",
        "pool=nodocker",
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-dockerd.sock"},
    ).start()
    cluster.agents["nodocker"] = agent

    async def broken() -> bool:
        nodes = (await api.list_nodes()).nodes
        node = next((n for n in nodes if n.name == "nodocker"), None)
        return node is not None and node.state == "unhealthy" and "dockerd" in (node.reason or "")

    await poll(broken, 30, interval=0.2, what="the node to be unhealthy for its dockerd")
    agent.kill()

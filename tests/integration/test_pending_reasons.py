"""Why a queued job waits, over real HTTP with a real scheduler and real agents (process
executor): the reason counts the nodes by cause, `pending` carries the counts, and
`berth job` shows both."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.support import REPO, Api, SchedulerProcess, wait_until


async def _nodes_up(admin: Api, *names: str) -> dict[str, dict[str, Any]]:
    async def up() -> dict[str, dict[str, Any]] | None:
        _, body = await admin.get("/api/v1/nodes")
        found = {n["name"]: n for n in body["nodes"] if n["state"] in ("idle", "busy")}
        return found if all(name in found for name in names) else None

    found: dict[str, dict[str, Any]] = await wait_until(up, timeout=30)
    return found


async def _job_where(admin: Api, job_id: str, check: Any) -> dict[str, Any]:
    async def seen() -> dict[str, Any] | None:
        _, job = await admin.get(f"/api/v1/jobs/{job_id}")
        return job if check(job) else None

    job: dict[str, Any] = await wait_until(seen, timeout=30, interval=0.1)
    return job


async def _submit(admin: Api, command: str, memory_mb: int = 32) -> str:
    status, job = await admin.post(
        "/api/v1/jobs",
        {"image": "busybox", "command": command, "resources": {"cpu": 0.1, "memory_mb": memory_mb}},
    )
    assert status == 201, job
    job_id: str = job["id"]
    return job_id


def _berth_job(sched: SchedulerProcess, job_id: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "120"}
    env["BERTH_ADDR"], env["BERTH_TOKEN"] = sched.url, sched.admin_token
    done = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "job", job_id],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_queued_job_says_which_nodes_cannot_take_it_and_why(
    sched: SchedulerProcess, admin: Api, agents: Any
) -> None:
    for name in ("a", "b", "c"):
        agents(name, "--max-parallel", "1")
    nodes = await _nodes_up(admin, "a", "b", "c")
    status, body = await admin.post(
        f"/api/v1/nodes/{nodes['c']['id']}/drain", {"drain": True, "reason": "maintenance"}
    )
    assert status == 200, body

    # a and b run one job each, their limit; c drains.
    sleepers = [await _submit(admin, "sleep 120") for _ in range(2)]
    for job_id in sleepers:
        await _job_where(admin, job_id, lambda j: j["state"] == "running")
    behind = await _submit(admin, "true")
    job = await _job_where(admin, behind, lambda j: j["pending"] is not None)
    assert job["state"] == "queued"
    # It is first in the queue, so it also has a node reserved (the one whose job the
    # estimates end first), and says so before why it cannot start now.
    assert job["reservation"] is not None
    assert job["reason"].startswith(f"reserved: node {job['reservation']['node']} from ")
    assert job["reason"].endswith(
        "; 0/3 nodes are available: 2 at their parallel limit, 1 draining"
    )
    assert job["pending"] == {"parallel_limit": 2, "draining": 1}
    shown = _berth_job(sched, behind)
    assert f"waiting: {job['reason']}" in shown, shown
    assert "pending   parallel_limit 2, draining 1" in shown, shown

    # One slot frees; the job behind takes it. A job asking for more memory than any
    # node has then waits for memory, saying how much it needs.
    status, body = await admin.post(f"/api/v1/jobs/{sleepers[1]}/cancel", {})
    assert status == 200, body
    placed = await _job_where(admin, behind, lambda j: j["state"] != "queued")
    assert placed["pending"] is None
    await _job_where(admin, behind, lambda j: j["state"] == "completed")
    await _job_where(admin, sleepers[1], lambda j: j["state"] == "cancelled")
    biggest = max(n["capacity"]["memory_mb"] - n["reserved"]["memory_mb"] for n in nodes.values())
    huge = await _submit(admin, "true", memory_mb=biggest + 1)
    job = await _job_where(
        admin, huge, lambda j: (j["pending"] or {}).get("memory") == 1 and j["state"] == "queued"
    )
    assert job["pending"] == {"parallel_limit": 1, "memory": 1, "draining": 1}
    assert sum(job["pending"].values()) == len(nodes)
    assert f"1 lacks memory (needs {biggest + 1} MiB)" in job["reason"]
    assert job["reason"].startswith("0/3 nodes are available: ")

    # The job.pending event carries the counts too.
    async def told() -> bool:
        status, body = await admin.get(f"/api/v1/jobs/{huge}/events", params={"since": 0})
        assert status == 200, body
        data = [e["data"] for e in body["events"] if e["type"] == "job.pending"]
        return bool(data) and data[-1] == {"reason": job["reason"], "pending": job["pending"]}

    await wait_until(told, timeout=10, interval=0.1)

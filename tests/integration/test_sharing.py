"""Sharing the cluster over real HTTP, with a real scheduler and real agents (process
executor): quotas, the fair-share order, preemption, and what survives a SIGKILL of
the scheduler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_queue_rules import _job_where, _nodes_up, _spec
from tests.support import REPO, Api, SchedulerProcess, wait_until


async def _token(admin: Api, http: aiohttp.ClientSession, url: str, name: str, **quota: Any) -> Api:
    status, made = await admin.post("/api/v1/tokens", {"role": "submit", "name": name, **quota})
    assert status == 201, made
    return Api(http, url, made["token"])


def _berth(sched: SchedulerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BERTH_ADDR": sched.url, "BERTH_TOKEN": sched.admin_token}
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _owner(api: Api, name: str) -> dict[str, Any]:
    _, body = await api.get("/api/v1/owners")
    [found] = [o for o in body["owners"] if o["name"] == name]
    return dict(found)


async def test_a_quota_holds_an_owner_to_its_limit_and_can_be_raised(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api, agents: Any
) -> None:
    agents("w")
    await _nodes_up(admin, "w")
    ci = await _token(admin, http, sched.url, "ci", max_running_jobs=1)
    ids = [(await ci.post("/api/v1/jobs", _spec("sleep 30")))[1]["id"] for _ in range(2)]
    await _job_where(admin, ids[0], lambda j: j["state"] == "running")
    waiting = await _job_where(admin, ids[1], lambda j: (j["reason"] or "").startswith("quota"))
    assert waiting["state"] == "queued"
    assert waiting["reason"] == "quota: ci runs 1 of its 1 jobs"
    mine = await _owner(ci, "ci")
    assert mine["quota"]["max_running_jobs"] == 1 and mine["running_jobs"] == 1
    # A submit token sees its own line only; it may not set quotas.
    _, seen = await ci.get("/api/v1/owners")
    assert [o["name"] for o in seen["owners"]] == ["ci"]
    status, _ = await ci.call("PUT", "/api/v1/owners/ci/quota", {"max_running_jobs": 5})
    assert status == 403
    status, body = await admin.call("PUT", "/api/v1/owners/ci/quota", {"max_running_jobs": 0})
    assert status == 400 and "max_running_jobs" in body["error"]["message"]

    done = _berth(sched, "token", "quota", "ci", "--max-running-jobs", "2")
    assert done.returncode == 0, done.stderr
    assert "/2 " in done.stdout  # its limit is now 2
    await _job_where(admin, ids[1], lambda j: j["state"] == "running")
    for job_id in ids:
        await admin.post(f"/api/v1/jobs/{job_id}/cancel")


async def test_one_owners_backlog_does_not_hold_back_anothers_job(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api, agents: Any
) -> None:
    agents("w")  # two slots
    await _nodes_up(admin, "w")
    flood = await _token(admin, http, sched.url, "flood")
    single = await _token(admin, http, sched.url, "single")
    _, batch = await flood.post(
        "/api/v1/jobs/batch", {"jobs": [_spec("sleep 0.3") for _ in range(30)]}
    )
    flood_ids = [j["id"] for j in batch["jobs"]]
    await _job_where(admin, flood_ids[0], lambda j: j["state"] != "queued")
    _, mine = await single.post("/api/v1/jobs", _spec("true"))
    done = await _job_where(admin, mine["id"], lambda j: j["state"] == "completed", timeout=60)
    # It started as soon as a slot freed, well before the flood drained.
    started_flood = 0
    for job_id in flood_ids:
        _, other = await admin.get(f"/api/v1/jobs/{job_id}")
        if other["started_at"] is not None and other["started_at"] <= done["started_at"]:
            started_flood += 1
    assert started_flood <= 6, started_flood
    usage = await _owner(admin, "flood")
    assert usage["usage_cpu_s"] > 0


async def test_a_high_priority_job_preempts_a_preemptible_one_which_runs_again(
    sched: SchedulerProcess, admin: Api, agents: Any
) -> None:
    agents("w")
    await _nodes_up(admin, "w")
    big = {"cpu": 0.1, "memory_mb": 32}
    victims = []
    for _ in range(2):  # both slots taken
        _, victim = await admin.post(
            "/api/v1/jobs",
            {**_spec("sleep 60", priority=10, preemptible=True), "resources": big},
        )
        victims.append(victim["id"])
    for victim_id in victims:
        await _job_where(admin, victim_id, lambda j: j["state"] == "running")
    _, urgent = await admin.post("/api/v1/jobs", _spec("echo urgent", priority=90))
    done = await _job_where(admin, urgent["id"], lambda j: j["state"] == "completed")
    assert done["attempt"] == 1
    stopped = []
    for victim_id in victims:
        _, victim = await admin.get(f"/api/v1/jobs/{victim_id}")
        if victim["requeues"]:
            stopped.append(victim)
    [victim] = stopped  # one victim is enough for one job
    assert victim["attempts"][0]["error"] == (f"preempted by job {urgent['id']} (priority 90)")
    _, events = await admin.get(f"/api/v1/jobs/{victim['id']}/events")
    assert any(
        e["type"] == "job.preempted" and e["data"]["by"] == urgent["id"] for e in events["events"]
    )
    again = await _job_where(admin, victim["id"], lambda j: j["state"] == "running")
    assert again["attempt"] == 2 and again["retries"] == 0
    for victim_id in victims:
        await admin.post(f"/api/v1/jobs/{victim_id}/cancel")


async def test_quotas_and_usage_survive_a_sigkill_of_the_scheduler(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api, agents: Any
) -> None:
    agents("w")
    await _nodes_up(admin, "w")
    ci = await _token(admin, http, sched.url, "ci", max_running_cpu=0.5)
    _, job = await ci.post("/api/v1/jobs", _spec("sleep 1.5"))
    await _job_where(admin, job["id"], lambda j: j["state"] == "completed")
    before = await _owner(admin, "ci")
    assert before["usage_cpu_s"] > 0
    # A read shows the job's end as soon as it is known; a write answered after it
    # means it is committed too (commits go in order), so the kill cannot beat it.
    status, body = await admin.call("PUT", "/api/v1/owners/ci/quota", {"max_running_cpu": 0.5})
    assert status == 200, body
    sched.kill()
    sched.start()
    admin = Api(http, sched.url, sched.admin_token)
    after = await wait_until(lambda: _owner(admin, "ci"), timeout=10)
    assert (
        after["quota"]
        == before["quota"]
        == {
            "max_running_cpu": 0.5,
            "max_running_memory_mb": None,
            "max_running_jobs": None,
        }
    )
    assert after["usage_cpu_s"] == pytest.approx(before["usage_cpu_s"], rel=0.05)


def test_the_owners_command_lists_quotas_and_usage(tmp_path: Path) -> None:
    proc = SchedulerProcess(tmp_path / "s").start()
    try:
        made = _berth(
            proc,
            "token",
            "create",
            "--role",
            "submit",
            "--name",
            "ci",
            "--max-running-cpu",
            "16",
            "--max-running-memory-mb",
            "65536",
            "--max-running-jobs",
            "100",
        )
        assert made.returncode == 0, made.stderr
        listed = _berth(proc, "token", "owners")
        assert listed.returncode == 0, listed.stderr
        [row] = [line for line in listed.stdout.splitlines() if line.startswith("ci ")]
        assert "0/16" in row and "0/65536" in row and "0/100" in row
    finally:
        proc.kill()

"""How a job ends or goes on, over real HTTP with a real scheduler and real agents
(process executor): requeue after losses the job did not cause, drain with requeue,
exit-code rules, dependency kinds, queue timeouts and deadlines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, Api, SchedulerProcess, wait_until


async def _nodes_up(admin: Api, *names: str) -> dict[str, str]:
    async def up() -> dict[str, str] | None:
        _, body = await admin.get("/api/v1/nodes")
        found = {n["name"]: n["id"] for n in body["nodes"] if n["state"] != "offline"}
        return found if all(name in found for name in names) else None

    found: dict[str, str] = await wait_until(up, timeout=30)
    return found


async def _job_where(admin: Api, job_id: str, check: Any, timeout: float = 30) -> dict[str, Any]:
    async def seen() -> dict[str, Any] | None:
        _, job = await admin.get(f"/api/v1/jobs/{job_id}")
        return job if check(job) else None

    job: dict[str, Any] = await wait_until(seen, timeout=timeout, interval=0.1)
    return job


def _spec(command: str, **fields: Any) -> dict[str, Any]:
    return {
        "image": "busybox",
        "command": command,
        "resources": {"cpu": 0.1, "memory_mb": 32},
        **fields,
    }


async def test_a_job_whose_agent_is_killed_is_requeued_without_spending_a_retry(
    sched: SchedulerProcess, admin: Api, agents: Any
) -> None:
    doomed = agents("doomed")
    await _nodes_up(admin, "doomed")
    _, job = await admin.post("/api/v1/jobs", _spec("sleep 5"))
    await _job_where(admin, job["id"], lambda j: j["state"] == "running")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    agents("spare")
    done = await _job_where(admin, job["id"], lambda j: j["state"] == "completed", timeout=60)
    assert (done["attempt"], done["requeues"], done["retries"]) == (2, 1, 0)
    [lost] = done["attempts"]
    assert lost["state"] == "failed" and "went offline" in lost["error"]


async def test_a_drain_with_requeue_moves_running_jobs_to_another_node(
    sched: SchedulerProcess, admin: Api, agents: Any
) -> None:
    agents("old")
    ids = await _nodes_up(admin, "old")
    _, job = await admin.post("/api/v1/jobs", _spec("sleep 30"))
    running = await _job_where(admin, job["id"], lambda j: j["state"] == "running")
    assert running["node_id"] == ids["old"]
    agents("new")
    ids = await _nodes_up(admin, "old", "new")
    status, node = await admin.post(
        f"/api/v1/nodes/{ids['old']}/drain", {"reason": "kernel update", "requeue": True}
    )
    assert status == 200 and node["draining"] is True
    moved = await _job_where(
        admin, job["id"], lambda j: j["state"] == "running" and j["node_id"] == ids["new"]
    )
    assert (moved["attempt"], moved["requeues"], moved["retries"]) == (2, 1, 0)
    # The old node's agent stopped the first attempt and let its resources go.
    await _job_where(admin, job["id"], lambda j: True)

    async def released() -> bool:
        _, old = await admin.get(f"/api/v1/nodes/{ids['old']}")
        return bool(old["allocated"]["cpu"] == 0 and not old["releasing"])

    await wait_until(released, timeout=30)
    _, audit = await admin.get("/api/v1/audit", params={"action": "node.drain"})
    assert audit["entries"][-1]["details"]["requeue"] is True
    await admin.post(f"/api/v1/jobs/{job['id']}/cancel")


async def test_exit_code_rules_decide_what_is_retried(
    sched: SchedulerProcess, admin: Api, agents: Any
) -> None:
    agents("w")
    await _nodes_up(admin, "w")
    _, final = await admin.post(
        "/api/v1/jobs",
        _spec("exit 3", max_retries=3, retry_delay_s=0, no_retry_on_exit_codes=[3]),
    )
    _, flaky = await admin.post(
        "/api/v1/jobs",
        _spec(
            '[ "$BERTH_ATTEMPT" = 2 ] && exit 0; exit 75',
            max_retries=3,
            retry_delay_s=0,
            retry_on_exit_codes=[75],
        ),
    )
    failed = await _job_where(admin, final["id"], lambda j: j["state"] == "failed")
    assert (failed["attempt"], failed["retries"], failed["exit_code"]) == (1, 0, 3)
    assert failed["error_code"] == "exit_code_not_retried"
    ended = await _job_where(admin, flaky["id"], lambda j: j["state"] == "completed")
    assert ended["retries"] == 1 and [a["exit_code"] for a in ended["attempts"]] == [75]


async def test_dependencies_may_wait_for_a_failure_or_for_any_end(
    sched: SchedulerProcess, admin: Api, agents: Any
) -> None:
    agents("w")
    await _nodes_up(admin, "w")
    _, bad = await admin.post("/api/v1/jobs", _spec("exit 1"))
    _, cleanup = await admin.post(
        "/api/v1/jobs", _spec("true", depends_on=[{"job": bad["id"], "when": "failed"}])
    )
    _, report = await admin.post(
        "/api/v1/jobs", _spec("true", depends_on=[{"job": bad["id"], "when": "ended"}])
    )
    _, next_step = await admin.post("/api/v1/jobs", _spec("true", depends_on=[bad["id"]]))
    for job in (cleanup, report):
        await _job_where(admin, job["id"], lambda j: j["state"] == "completed")
    doomed = await _job_where(admin, next_step["id"], lambda j: j["state"] == "failed")
    assert doomed["error"] == f"dependency_failed: job {bad['id']} did not complete"
    status, body = await admin.post(
        "/api/v1/jobs", _spec("true", depends_on=[{"job": bad["id"], "when": "sometimes"}])
    )
    assert status == 400 and "$.depends_on[0]" in body["error"]["message"]


async def test_queue_timeouts_and_deadlines_end_jobs(
    sched: SchedulerProcess, admin: Api, agents: Any
) -> None:
    agents("w")
    await _nodes_up(admin, "w")
    # Asks for a label no node has: it waits, saying so, until its queue timeout.
    _, nowhere = await admin.post(
        "/api/v1/jobs",
        _spec("true", queue_timeout_s=1.5, constraints={"labels": {"host": "elsewhere"}}),
    )
    deadline = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    _, late = await admin.post("/api/v1/jobs", _spec("sleep 60", deadline=deadline))
    failed = await _job_where(admin, nowhere["id"], lambda j: j["state"] == "failed")
    assert failed["error_code"] == "queue_timeout" and failed["attempt"] == 1
    await _job_where(admin, late["id"], lambda j: j["state"] == "running")
    cancelled = await _job_where(admin, late["id"], lambda j: j["state"] == "cancelled")
    assert cancelled["error_code"] == "deadline"
    assert cancelled["reason"].startswith("cancelled at its deadline")


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"max_requeues": -1}, "$.max_requeues"),
        ({"queue_timeout_s": 0}, "$.queue_timeout_s"),
        ({"deadline": "tomorrow"}, "$.deadline"),
        ({"retry_on_exit_codes": [999]}, "$.retry_on_exit_codes[0]"),
        ({"retry_on_exit_codes": [1], "no_retry_on_exit_codes": [2]}, "exclude each other"),
        ({"deadline": "2030-01-01T00:00:00"}, "timezone"),
    ],
)
async def test_bad_queue_rules_are_refused_naming_the_field(
    admin: Api, fields: dict[str, Any], where: str
) -> None:
    status, body = await admin.post("/api/v1/jobs", _spec("true", **fields))
    assert status == 400 and where in body["error"]["message"], body
    _, listing = await admin.get("/api/v1/jobs")
    assert listing["jobs"] == []


async def test_the_scheduler_default_queue_timeout_fails_jobs_without_their_own(
    tmp_path: Path, http: Any
) -> None:
    proc = SchedulerProcess(tmp_path / "s", "--default-queue-timeout", "1").start()
    try:
        admin = Api(http, proc.url, proc.admin_token)
        _, default = await admin.post("/api/v1/jobs", _spec("true"))
        _, own = await admin.post("/api/v1/jobs", _spec("true", queue_timeout_s=600))
        failed = await _job_where(admin, default["id"], lambda j: j["state"] == "failed")
        assert failed["error"] == "not started within its queue timeout of 1s"
        _, waiting = await admin.get(f"/api/v1/jobs/{own['id']}")
        assert waiting["state"] == "queued"
    finally:
        proc.kill()


def test_berth_submit_sets_the_queue_rules_from_flags(sched: SchedulerProcess) -> None:
    env = {**os.environ, "BERTH_ADDR": sched.url, "BERTH_TOKEN": sched.admin_token}

    def berth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from cli.main import main; main()", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = berth("submit", "busybox", "--", "true")
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.strip()
    made = berth(
        "submit", "--priority", "70", "--max-retries", "2", "--max-requeues", "1",
        "--queue-timeout", "600", "--deadline", "2031-01-02T03:04:05Z",
        "--after", f"{first_id}:ended", "--no-retry-on-exit-code", "2",
        "--no-retry-on-exit-code", "3", "--preemptible", "--json", "busybox", "--", "true",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    [job] = json.loads(made.stdout)
    spec = job["spec"]
    assert (spec["priority"], spec["max_retries"], spec["max_requeues"]) == (70, 2, 1)
    assert spec["queue_timeout_s"] == 600 and spec["deadline"].startswith("2031-01-02T03:04:05")
    assert spec["depends_on"] == [{"job": first_id, "when": "ended"}]
    assert spec["no_retry_on_exit_codes"] == [2, 3] and spec["preemptible"] is True
    plain = berth("submit", "--json", "busybox", "--", "true")
    [job] = json.loads(plain.stdout)
    assert job["spec"]["preemptible"] is False and job["spec"]["depends_on"] == []
    both = berth("submit", "--retry-on-exit-code", "1", "--no-retry-on-exit-code", "2", "busybox")
    assert both.returncode == 2 and "exclude each other" in both.stderr

"""Reservations and backfill over real HTTP, with a real agent (process executor): a job
that fits nowhere gets the node where the running jobs' estimates free room earliest;
a later job runs now only if its own estimate ends before that, so the big job is not
overtaken for ever."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.integration.conftest import StartAgent
from tests.integration.test_cli import berth
from tests.support import Api, SchedulerProcess, wait_until


def _at(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _spec(name: str, cpu: float, command: str) -> dict[str, Any]:
    return {
        "image": "busybox",
        "name": name,
        "command": command,
        "resources": {"cpu": cpu, "memory_mb": 16},
    }


async def _submit(api: Api, name: str, cpu: float, expected: float, sleep: int) -> str:
    spec = {**_spec(name, cpu, f"sleep {sleep}"), "expected_runtime_s": expected}
    status, body = await api.post("/api/v1/jobs", spec)
    assert status == 201, body
    job_id: str = body["id"]
    return job_id


async def _job(api: Api, job_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/api/v1/jobs/{job_id}")
    assert status == 200, body
    return dict(body)


async def _running(api: Api, job_id: str) -> dict[str, Any] | None:
    job = await _job(api, job_id)
    return job if job["state"] == "running" else None


async def _cores(api: Api) -> tuple[str, float]:
    """The one node, once it is up: its name and the cores jobs may ask for."""

    async def up() -> dict[str, Any] | None:
        _, body = await api.get("/api/v1/nodes")
        nodes = [n for n in body["nodes"] if n["state"] in ("idle", "busy")]
        return nodes[0] if nodes else None

    node = await wait_until(up, timeout=15)
    return node["name"], node["capacity"]["cpu"] - node["reserved"]["cpu"]


async def test_a_big_job_gets_a_reservation_and_only_jobs_that_end_before_it_backfill(
    admin: Api, sched: SchedulerProcess, agents: StartAgent, tmp_path: Path
) -> None:
    agents("w1", "--max-parallel", "4")
    name, cores = await _cores(admin)
    # A holds half the node for an estimated 600 s; B needs all of it.
    a = await _submit(admin, "a", cores / 2, expected=600, sleep=30)
    running = await wait_until(lambda: _running(admin, a), timeout=15)
    b = await _submit(admin, "b", cores, expected=60, sleep=1)

    async def reserved() -> dict[str, Any] | None:
        job = await _job(admin, b)
        return job if job["reservation"] else None

    big = await wait_until(reserved, timeout=10)
    assert big["state"] == "queued" and big["reason"].startswith("reserved:"), big
    assert big["reservation"]["node"] == name
    assert big["reservation"]["node_id"] == running["node_id"]
    expected_start = _at(running["started_at"] or running["assigned_at"]) + 600
    assert abs(_at(big["reservation"]["start"]) - expected_start) < 10, big["reservation"]
    shown = berth(sched, "job", b)
    assert shown.returncode == 0 and f"reserved  node {name} from " in shown.stdout, shown

    # D would still run when B is due to start, and B needs the whole node: it waits.
    # C ends (by its estimate) well before: it runs in the room A leaves now.
    d = await _submit(admin, "d", cores / 4, expected=3000, sleep=1)
    # C comes through `berth submit --expected-runtime`.
    spec_file = tmp_path / "c.json"
    spec_file.write_text(json.dumps(_spec("c", cores / 4, "sleep 1")))
    submitted = berth(sched, "submit", "--expected-runtime", "30", "-f", str(spec_file))
    assert submitted.returncode == 0, submitted.stderr
    c = submitted.stdout.strip()

    async def c_ran() -> bool:
        return (await _job(admin, c))["state"] in ("assigned", "running", "completed")

    await wait_until(c_ran, timeout=10)
    assert (await _job(admin, c))["spec"]["expected_runtime_s"] == 30
    late = await _job(admin, d)
    assert late["state"] == "queued" and "reserved for an earlier job" in late["reason"], late
    big = await _job(admin, b)
    assert big["state"] == "queued" and big["reservation"]["node"] == name, big


async def test_an_expected_runtime_past_the_timeout_is_refused(admin: Api) -> None:
    spec = {"image": "busybox", "timeout_s": 60, "expected_runtime_s": 61}
    status, body = await admin.post("/api/v1/jobs", spec)
    assert status == 400, body
    assert body["error"]["details"]["field"] == "$.expected_runtime_s", body
    # Equal to the timeout is fine.
    status, body = await admin.post("/api/v1/jobs", {**spec, "expected_runtime_s": 60})
    assert status == 201, body
    assert body["spec"]["expected_runtime_s"] == 60

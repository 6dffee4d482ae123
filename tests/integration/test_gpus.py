"""GPUs over real HTTP: a real agent told ``--gpus 0,1`` on a host without an NVIDIA
driver (process executor) registers two GPUs by index, runs two one-GPU jobs side by
side on different GPUs, keeps a third waiting for a GPU, and the node-status endpoint
and `berth nodes` show which job holds each."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.integration.conftest import StartAgent
from tests.integration.test_cli import berth
from tests.support import Api, SchedulerProcess, wait_until

#: each job says what it sees, then waits until the test lets it end
SHOW = (
    'echo "gpus=$BERTH_GPUS cuda=$CUDA_VISIBLE_DEVICES"; while [ ! -e {go} ]; do sleep 0.05; done'
)


def _job(go: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "image": "busybox",
        "name": name,
        "command": SHOW.format(go=go),
        "resources": {"cpu": 0.1, "memory_mb": 16, "gpus": 1},
        "timeout_s": 60,
        **extra,
    }


async def _submit(api: Api, spec: dict[str, Any]) -> str:
    status, job = await api.post("/api/v1/jobs", spec)
    assert status == 201, job
    return str(job["id"])


async def _job_where(api: Api, job_id: str, test: Any) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status, job = await api.get(f"/api/v1/jobs/{job_id}")
        assert status == 200, job
        return job if test(job) else None

    found: dict[str, Any] = await wait_until(reached, timeout=20, interval=0.1)
    return found


async def _log(api: Api, job_id: str) -> str:
    async def printed() -> str | None:
        status, body = await api.call("GET", f"/api/v1/jobs/{job_id}/logs")
        assert status == 200, body
        return body.decode() if isinstance(body, bytes) and body.endswith(b"\n") else None

    found: str = await wait_until(printed, timeout=20, interval=0.1)
    return found


async def test_two_gpu_jobs_run_side_by_side_on_different_gpus_and_a_third_waits(
    sched: SchedulerProcess, admin: Api, agents: StartAgent, tmp_path: Path
) -> None:
    agents("gpu-host", "--gpus", "0,1", "--max-parallel", "3")
    go = tmp_path / "go"
    first = await _submit(admin, _job(go, "first"))
    second = await _submit(admin, _job(go, "second"))
    running = [
        await _job_where(admin, j, lambda job: job["state"] == "running") for j in (first, second)
    ]
    assert sorted(tuple(job["gpu_devices"]) for job in running) == [(0,), (1,)]
    seen = [await _log(admin, j) for j in (first, second)]
    assert sorted(seen) == ["gpus=0 cuda=0\n", "gpus=1 cuda=1\n"]
    # What each job saw is the GPU the scheduler gave it.
    for job, log in zip(running, seen, strict=True):
        assert log == f"gpus={job['gpu_devices'][0]} cuda={job['gpu_devices'][0]}\n"

    third = await _submit(admin, _job(go, "third"))
    waiting = await _job_where(admin, third, lambda job: job.get("pending"))
    assert waiting["state"] == "queued"
    assert waiting["pending"] == {"gpus": 1}
    assert waiting["reason"].endswith("0/1 nodes are available: 1 lacks GPUs (needs 1)")
    detail = await asyncio.to_thread(berth, sched, "job", third)
    assert "pending   gpus 1" in detail.stdout, detail.stdout

    status, listing = await admin.get("/api/v1/nodes")
    assert status == 200, listing
    (node,) = listing["nodes"]
    assert node["capacity"]["gpus"] == 2 and node["allocated"]["gpus"] == 2
    # Registered by index only: this host has no NVML to tell their UUID, model, memory.
    assert node["devices"] == [
        {"index": i, "uuid": None, "model": None, "memory_mb": None} for i in (0, 1)
    ]
    holders = {job["gpu_devices"][0]: job["id"] for job in running}
    assert node["device_jobs"] == {str(i): job_id for i, job_id in holders.items()}
    shown = await asyncio.to_thread(berth, sched, "nodes")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "GPUS" in lines[0] and "2/2" in lines[1]
    for i, job_id in holders.items():
        assert any(line.split()[:2] == ["gpu-host", str(i)] and job_id in line for line in lines)

    go.touch()  # the first two end; the third gets a GPU they freed
    started = await _job_where(admin, third, lambda job: job["state"] in ("running", "completed"))
    assert started["gpu_devices"] in ([0], [1])
    done = await _job_where(admin, third, lambda job: job["state"] == "completed")
    assert (
        await _log(admin, third) == f"gpus={done['gpu_devices'][0]} cuda={done['gpu_devices'][0]}\n"
    )
    status, node = await admin.get(f"/api/v1/nodes/{node['id']}")
    assert status == 200 and node["device_jobs"] == {} and node["allocated"]["gpus"] == 0
    assert "offered by index only" in (tmp_path / "gpu-host.log").read_text()


async def test_an_agent_without_a_driver_offers_no_gpus_and_says_why(
    admin: Api, agents: StartAgent, tmp_path: Path
) -> None:
    agents("plain-host")  # --gpus auto

    async def registered() -> dict[str, Any] | None:
        status, listing = await admin.get("/api/v1/nodes")
        assert status == 200, listing
        return listing["nodes"][0] if listing["nodes"] else None

    node = await wait_until(registered, timeout=20, interval=0.1)
    assert node["capacity"]["gpus"] == 0 and node["devices"] == []
    log = (tmp_path / "plain-host.log").read_text()
    assert "no GPUs found (NVML: " in log, log
    job = await _submit(admin, _job(tmp_path / "go", "wants-a-gpu", constraints={"gpu_model": "X"}))
    waiting = await _job_where(admin, job, lambda job: job.get("pending"))
    assert waiting["reason"] == "0/1 nodes are available: 1 has no X GPUs"

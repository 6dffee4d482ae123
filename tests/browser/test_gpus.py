"""A node card lists its GPUs: model and memory, the job that holds each, and live use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from playwright.async_api import Page, expect

from tests.browser.conftest import Heartbeats, PageErrors, login
from tests.support import Api, SchedulerProcess, SimAgent

MODEL = "NVIDIA H200"
MIB = 143_771


@dataclass
class GpuAgent(SimAgent):
    """A simulated agent that registers two GPUs and reports their use."""

    use: dict[int, tuple[float, int]] = field(default_factory=dict)

    async def register(self) -> None:
        api = Api(self.session, self.url, self.join_token)
        devices = [
            {"index": i, "uuid": f"GPU-{i}000", "model": MODEL, "memory_mb": MIB} for i in (0, 1)
        ]
        status, body = await api.post(
            "/api/v1/nodes/register",
            {
                "name": self.name,
                "capacity": {"cpu": self.cpu, "memory_mb": self.memory_mb, "gpus": 2},
                "max_parallel": self.max_parallel,
                "devices": devices,
            },
        )
        assert status == 200, body
        self.node_id, self.token = body["node_id"], body["node_token"]

    async def heartbeat(self, ram_free_mb: int | None = None) -> list[dict[str, Any]]:
        gpus = [
            {"index": i, "utilization_percent": pct, "memory_used_mb": used}
            for i, (pct, used) in self.use.items()
        ]
        metrics = {"ram_total_mb": self.memory_mb, "ram_free_mb": self.memory_mb, "gpus": gpus}
        running = [{"job_id": j, "attempt": a} for j, a in self.running.items()]
        status, body = await self.api.post(
            f"/api/v1/nodes/{self.node_id}/heartbeat", {"metrics": metrics, "running": running}
        )
        assert status == 200, body
        return list(body["commands"])


async def test_a_node_card_shows_each_gpu_its_job_and_its_use(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = GpuAgent(http, sched.url, sched.join_token, "gpu-node")
    await agent.register()
    await agent.heartbeat()
    agents.append(Heartbeats(agent).start())
    spec = {
        "image": "cuda",
        "name": "train",
        "resources": {"cpu": 1, "memory_mb": 256, "gpus": 1},
        "constraints": {"gpu_model": MODEL},
    }
    status, job = await admin.post("/api/v1/jobs", spec)
    assert status == 201, job
    (assignment,) = await agent.poll()
    (held,) = assignment["gpu_devices"]
    await agent.report(job["id"], "running")
    agent.use = {held: (87.0, 40_960), 1 - held: (0.0, 0)}

    await login(p, sched)
    card = p.locator('[data-testid="node-card"][data-node="gpu-node"]')
    rows = card.get_by_test_id("gpu")
    await expect(rows).to_have_count(2)
    busy = card.locator(f'[data-testid="gpu"][data-index="{held}"]')
    await expect(busy.locator(".gpu-name")).to_have_text(f"GPU {held} · {MODEL} · 140 GiB")
    chip = busy.locator(".chip-job")
    await expect(chip).to_have_attribute("href", f"#/jobs/{job['id']}")
    await expect(chip).to_have_attribute("title", f"held by job {job['id']}")
    # The job's name once the page knows the job, its id until then.
    await expect(chip).to_have_text(re.compile(f"^(train|{job['id']})$"))
    await expect(busy.locator(".gpu-live")).to_have_text("87% busy · 40 GiB of 140 GiB in use")
    idle = card.locator(f'[data-testid="gpu"][data-index="{1 - held}"]')
    await expect(idle.locator(".gpu-free")).to_be_visible()
    await expect(idle.locator(".chip-job")).to_be_hidden()

    await agent.report(job["id"], "completed", exit_code=0)
    await expect(busy.locator(".gpu-free")).to_be_visible()


async def test_a_job_asking_for_another_gpu_model_shows_why_it_waits(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = GpuAgent(http, sched.url, sched.join_token, "gpu-node")
    await agent.register()
    await agent.heartbeat()
    agents.append(Heartbeats(agent).start())
    spec = {
        "image": "cuda",
        "name": "wants-a100",
        "resources": {"cpu": 1, "memory_mb": 256, "gpus": 1},
        "constraints": {"gpu_model": "NVIDIA A100-SXM4-80GB"},
    }
    status, job = await admin.post("/api/v1/jobs", spec)
    assert status == 201, job
    await login(p, sched)
    await p.click(f'tr[data-job="{job["id"]}"] a.job-name')
    await expect(p.get_by_test_id("job-reason")).to_have_text(
        "0/1 nodes are available: 1 has no NVIDIA A100-SXM4-80GB GPUs"
    )
    counts = p.get_by_test_id("job-pending")
    await expect(counts.locator('tr[data-cause="gpu_model"]')).to_have_text(
        "1have no GPUs of the model or memory it asks for"
    )

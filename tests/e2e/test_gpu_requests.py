"""A container's GPUs reach a real dockerd as a device request. This host has no NVIDIA
container toolkit, so dockerd refuses the request: that it says so shows the request
was made, and the attempt fails as the node's fault with its container removed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest

from agent.executors.base import AttemptInfo, StartError
from agent.executors.docker import DockerExecutor
from agent.gpus import GpuGrant
from common.models import JobResources, JobSpec

pytestmark = pytest.mark.docker


def _runtimes() -> set[str]:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True)
    return set(json.loads(out.stdout or b"{}") or {})


@pytest.fixture
async def docker_executor(docker_image: str) -> AsyncIterator[DockerExecutor]:
    ex = await asyncio.to_thread(DockerExecutor, pull_policy="never", max_parallel=2)
    yield ex
    await ex.close()


def _spec(command: str) -> JobSpec:
    return JobSpec(
        image="berth-test/busybox:1", command=command, resources=JobResources(cpu=0.5, memory_mb=64)
    )


async def test_a_gpu_job_asks_dockerd_for_its_gpus_and_a_host_without_them_refuses(
    docker_executor: DockerExecutor,
) -> None:
    if "nvidia" in _runtimes():
        pytest.skip("dockerd has the NVIDIA runtime: it would not refuse")
    job_id = f"x{uuid.uuid4().hex[:12]}"
    grant = GpuGrant((0,), ("GPU-00000000-0000-0000-0000-000000000000",))
    info = AttemptInfo(job_id, 1, "n-gpu", 60.0, 64, gpus=grant)
    with pytest.raises(StartError) as err:
        await docker_executor.start(info, _spec("true"))
    assert err.value.infra
    assert "could not select device driver" in err.value.message
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=berth.job={job_id}"], capture_output=True
    )
    assert left.stdout.strip() == b""


async def test_a_job_without_gpus_runs_with_an_empty_berth_gpus(
    docker_executor: DockerExecutor,
) -> None:
    info = AttemptInfo(f"x{uuid.uuid4().hex[:12]}", 1, "n-gpu", 60.0, 64)
    ex = await docker_executor.start(info, _spec('echo "[$BERTH_GPUS]"'))
    try:
        out = b"".join([chunk async for chunk in ex.logs()])
        assert (await ex.wait()).exit_code == 0
    finally:
        await ex.remove()
    assert out == b"[]\n"

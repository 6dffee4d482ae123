"""The executors on their own, against a real dockerd and real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from agent.executors.base import AttemptInfo, Execution, Executor, StartError
from agent.executors.docker import DockerExecutor
from agent.executors.process import ProcessExecutor
from common.models import JobResources, JobSpec
from tests.e2e.conftest import poll

pytestmark = pytest.mark.docker


@pytest.fixture
async def docker_executor(docker_image: str) -> AsyncIterator[DockerExecutor]:
    ex = await asyncio.to_thread(DockerExecutor, pull_policy="never", max_parallel=2)
    yield ex
    await ex.close()


def _info(node: str, timeout_s: float = 60.0) -> AttemptInfo:
    return AttemptInfo(f"x{uuid.uuid4().hex[:12]}", 1, node, timeout_s, 64)


def _spec(command: str, image: str = "berth-test/busybox:1", timeout_s: float = 60.0) -> JobSpec:
    return JobSpec(
        image=image,
        command=command,
        resources=JobResources(cpu=0.5, memory_mb=64),
        timeout_s=timeout_s,
    )


async def _output(execution: Execution, skip: int = 0) -> bytes:
    return b"".join([chunk async for chunk in execution.logs(skip)])


def _docker_state(container_id: str) -> dict[str, object]:
    out = subprocess.run(
        ["docker", "inspect", container_id], capture_output=True, check=True
    ).stdout
    state: dict[str, object] = json.loads(out)[0]["State"]
    return state


async def test_docker_pause_resume_and_stop(docker_executor: DockerExecutor) -> None:
    node = f"n{uuid.uuid4().hex[:8]}"
    ex = await docker_executor.start(_info(node), _spec("echo up; sleep 60"))
    try:
        await ex.pause()
        assert (await asyncio.to_thread(_docker_state, ex.container_id))["Paused"] is True
        await ex.resume()
        assert (await asyncio.to_thread(_docker_state, ex.container_id))["Paused"] is False
        await ex.pause()
        await ex.stop(1)  # a paused container is stopped too
        status = await ex.wait()
        assert status.exit_code == 137
        assert await _output(ex) == b"up\n"
    finally:
        await ex.remove()


async def test_docker_readoption_resumes_output_after_what_was_shipped(
    docker_executor: DockerExecutor,
) -> None:
    node = f"n{uuid.uuid4().hex[:8]}"
    info = _info(node, timeout_s=42.0)
    first = await docker_executor.start(
        info, _spec("echo one; echo two; sleep 1; echo three", timeout_s=42.0)
    )
    try:
        found = await docker_executor.adopt({node})
        assert [(e.info.job_id, e.info.attempt, e.info.timeout_s) for e in found] == [
            (info.job_id, 1, 42.0)
        ]
        adopted = found[0]
        assert adopted.started_at is not None
        assert await _output(adopted, skip=len(b"one\n")) == b"two\nthree\n"
        assert (await adopted.wait()).exit_code == 0
    finally:
        await first.remove()
    assert await docker_executor.adopt({node}) == []


async def test_docker_missing_image_with_pull_policy_never_is_the_jobs_fault(
    docker_executor: DockerExecutor,
) -> None:
    with pytest.raises(StartError) as err:
        await docker_executor.start(_info("n0"), _spec("true", image="berth-test/absent:9"))
    assert not err.value.infra
    assert "berth-test/absent:9" in err.value.message


async def test_process_pause_resume_and_group_kill(tmp_path: Path) -> None:
    executor: Executor = ProcessExecutor(tmp_path / "work")
    ex = await executor.start(_info("n1"), _spec("sleep 60 & sleep 60; echo never"))
    try:
        pid = ex._proc.pid  # type: ignore[attr-defined]

        def group() -> list[psutil.Process]:
            return [p for p in psutil.process_iter() if _pgid(p.pid) == pid]

        # The shell and both of its sleeps, once they are forked.
        members = await poll(lambda: len(group()) >= 3 and group(), 10, what="the group")
        await ex.pause()
        await poll(
            lambda: all(p.status() == psutil.STATUS_STOPPED for p in members), 10, what="stop"
        )
        await ex.resume()
        assert all(p.status() != psutil.STATUS_STOPPED for p in members)
        await ex.stop(1)
        assert (await ex.wait()).exit_code == 143

        def gone() -> bool:
            return not [p for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        await poll(gone, 10, what="every process of the group to end")
    finally:
        await ex.remove()


def _pgid(pid: int) -> int | None:
    import os

    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None

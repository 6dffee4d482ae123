"""deploy/compose.yaml brought up with docker-compose from the images of
deploy/build-images.sh: PostgreSQL, two schedulers sharing it, two agents with the
docker executor on this host's dockerd. A job runs (its output comes back through the
agent's workspace), the leading scheduler's container is killed, and a job submitted to
the other one runs too."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from common.client import BerthClient
from common.models import JobResources, JobSpec
from tests.e2e.conftest import ensure_test_image, poll, wait_done, wait_for_nodes
from tests.support import REPO, free_port

COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
SERVICES = {"http://scheduler-a:8750": "scheduler-a", "http://scheduler-b:8750": "scheduler-b"}
#: the open-files limit the compose file asks for, unless this host allows less
NOFILE = 65536
#: seconds for compose to build the stack, or to take it down
COMPOSE_TIMEOUT_S = 300
#: seconds for a scheduler to lead, agents to register, a job to run; generous, as an
#: agent whose long poll went to the old leader asks the new one after a backoff
WAIT_S = 120.0


class Stack:
    """One compose project of deploy/compose.yaml."""

    def __init__(self, root: Path) -> None:
        self.project = f"berthtest{uuid.uuid4().hex[:10]}"
        self.ports = {"scheduler-a": free_port(), "scheduler-b": free_port()}
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
        self.env = {
            **os.environ,
            "BERTH_COMPOSE_PORT_A": str(self.ports["scheduler-a"]),
            "BERTH_COMPOSE_PORT_B": str(self.ports["scheduler-b"]),
            "BERTH_COMPOSE_AGENT_DIR": str(root / "agents"),
            "BERTH_COMPOSE_NOFILE": str(nofile),
        }

    def compose(self, *args: str, check: bool = True) -> str:
        cmd = ["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        done = subprocess.run(
            cmd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMPOSE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd[3:])} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", check=False)


@pytest.fixture
def stack(deploy_images: tuple[str, ...], tmp_path: Path) -> Iterator[Stack]:
    ensure_test_image()
    s = Stack(tmp_path)
    try:
        s.compose("up", "-d")
        yield s
    finally:
        s.compose("down", "-v", "--timeout", "20", check=False)


async def leader_of(http: aiohttp.ClientSession, stack: Stack, services: list[str]) -> str:
    """The service among ``services`` that answers /readyz?leader=1 (waits for one)."""

    async def leading() -> str | None:
        for service in services:
            try:
                async with http.get(stack.url(service) + "/readyz?leader=1") as r:
                    if r.status == 200:
                        return service
            except aiohttp.ClientError:
                pass
        return None

    found: str = await poll(leading, WAIT_S, interval=0.2, what=f"one of {services} to lead")
    return found


def job(text: str) -> JobSpec:
    """A busybox job that prints ``text`` and leaves it in its outputs."""
    script = f"echo {text}; echo {text} > /workspace/out/result.txt"
    return JobSpec(
        image="berth-test/busybox:1",
        command=["sh", "-c", script],
        timeout_s=120,
        resources=JobResources(cpu=0.1, memory_mb=32),
    )


async def run_job(client: BerthClient, text: str, tmp_path: Path) -> None:
    """Submit a job, wait for it to complete, check its log and its outputs."""
    submitted = await client.submit_job(job(text))
    done = await wait_done(client, submitted.id, timeout=WAIT_S)
    assert done.state == "completed", done
    assert done.node_id is not None
    logs = await client.request(
        "GET", f"/api/v1/jobs/{done.id}/logs", params={"attempt": done.attempt, "offset": 0}
    )
    assert text.encode() in logs
    # The outputs are read back from the workspace the host's dockerd mounted into the
    # job's container: the agent's state directory has the same path inside its own.
    archive = tmp_path / f"{done.id}.tar.gz"
    await client.download_outputs(done.id, archive)
    with tarfile.open(archive) as tar:
        names = {m.name.lstrip("./"): m for m in tar.getmembers()}
        member = tar.extractfile(names["result.txt"])
        assert member is not None
        assert io.TextIOWrapper(member).read().strip() == text


@pytest.mark.docker
async def test_compose_stack_runs_jobs_and_survives_the_leaders_death(
    stack: Stack, tmp_path: Path
) -> None:
    try:
        token = stack.compose("exec", "-T", "scheduler-a", "cat", "/var/lib/berth/admin.token")
        token = token.strip()
        assert token
        # The schedulers run as the image's unprivileged user, not as root.
        for service in ("scheduler-a", "scheduler-b"):
            assert stack.compose("exec", "-T", service, "id", "-un").strip() == "berth"
            assert stack.compose("exec", "-T", service, "id", "-u").strip() == "10001"
        async with aiohttp.ClientSession() as http:
            first = await leader_of(http, stack, ["scheduler-a", "scheduler-b"])
            async with BerthClient(stack.url(first), token, timeout=30) as client:
                await wait_for_nodes(client, ["agent-1", "agent-2"], timeout=WAIT_S)
                await run_job(client, "before-the-kill", tmp_path)

                # Both schedulers are listed: the other one follows, ready to take over.
                async def both_listed() -> bool:
                    roles = {s["url"]: s["role"] for s in await client.schedulers()}
                    return roles == {
                        url: "leader" if name == first else "standby"
                        for url, name in SERVICES.items()
                    }

                await poll(both_listed, WAIT_S, interval=0.2, what="a leader and a standby")

            container = stack.compose("ps", "-q", first).strip()
            subprocess.run(["docker", "kill", container], check=True, capture_output=True)
            second = "scheduler-b" if first == "scheduler-a" else "scheduler-a"
            assert await leader_of(http, stack, [second]) == second

            async with BerthClient(stack.url(second), token, timeout=30) as client:
                await run_job(client, "after-the-kill", tmp_path)
                state = subprocess.run(
                    ["docker", "inspect", "-f", "{{.State.Running}}", container],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                # The job ran with the first leader dead, not restarted.
                assert state.stdout.strip() == "false"
    except BaseException as e:
        e.add_note(f"compose logs:\n{stack.logs()}")
        raise

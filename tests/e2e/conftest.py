"""End-to-end fixtures: a real dockerd, real scheduler and agent processes.

The session starts one scheduler on a free loopback port and three agents on it, told
apart by a ``pool`` label that every test puts in its job's constraints:

- ``docker``: the docker executor, 2 parallel slots, the whole host;
- ``small``: the docker executor, 1 slot, all but 512 MiB of RAM reserved;
- ``process``: the process executor, 2 slots.

Tests that kill agents or stop the scheduler start their own. The test image
``berth-test/busybox:1`` is built when missing: Debian's static busybox plus a
symlink per applet, imported with ``docker import`` (there is no registry here).
Without dockerd the tests are skipped, except under CI=true where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.client import BerthClient
from common.errors import BerthError
from common.models import Constraints, Job, JobResources, JobSpec, Node
from tests.support import REPO, SchedulerProcess

IMAGE = "berth-test/busybox:1"
BUSYBOX = Path("/bin/busybox")
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
#: seconds between SIGTERM and SIGKILL in the agents under test
STOP_GRACE = "2"


# --- docker and the test image ---------------------------------------------------------


def _docker_answers() -> bool:
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _build_image() -> None:
    """Import a busybox root filesystem as IMAGE."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "root"):
            (root / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for name in applets:
            if name != "busybox" and not (root / "bin" / name).exists():
                (root / "bin" / name).symlink_to("busybox")
        (root / "tmp").chmod(0o1777)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        subprocess.run(
            ["docker", "import", "-c", "ENV PATH=/bin", str(archive), IMAGE],
            check=True,
            capture_output=True,
        )


def ensure_test_image() -> str:
    """Build the test image unless it is there; returns its name."""
    present = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True)
    if present.returncode != 0:
        _build_image()
    return IMAGE


@pytest.fixture(scope="session")
def docker_image() -> str:
    if not _docker_answers():
        if os.environ.get("CI") == "true":
            pytest.fail("dockerd does not answer (`docker info` failed); CI needs it")
        pytest.skip("dockerd does not answer")
    return ensure_test_image()


# --- agent processes -------------------------------------------------------------------


class AgentProcess:
    """A real `berth agent` process."""

    def __init__(
        self,
        sched: SchedulerProcess,
        name: str,
        state_dir: Path,
        *extra: str,
        scheduler_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.sched = sched
        self.name = name
        self.state_dir = state_dir
        self.extra = extra
        self.url = scheduler_url or sched.url
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{name}-agent.log"

    def start(self) -> AgentProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        token_file = self.state_dir.parent / f"{self.name}.join"
        token_file.write_text(self.sched.join_token)
        cmd = [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "agent",
            "--scheduler",
            self.url,
            "--join-token-file",
            str(token_file),
            "--state-dir",
            str(self.state_dir),
            "--name",
            self.name,
            "--stop-grace",
            STOP_GRACE,
            "--log-level",
            "debug",
            *self.extra,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """The session's scheduler and agents, with helpers the tests share."""

    def __init__(self, root: Path, image: str) -> None:
        self.root = root
        self.image = image
        self.sched = SchedulerProcess(
            root / "scheduler",
            "--heartbeat-interval",
            "0.5",
            "--node-ttl",
            "20",
            "--restart-grace",
            "30",
        )
        self.agents: dict[str, AgentProcess] = {}

    def add_agent(self, name: str, *extra: str) -> AgentProcess:
        agent = AgentProcess(self.sched, name, self.root / name, *extra).start()
        self.agents[name] = agent
        return agent

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.sched.kill()


@pytest.fixture(scope="session")
def cluster(docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("e2e"), docker_image)
    c.sched.start()
    try:
        c.add_agent(
            "docker",
            "--executor",
            "docker",
            "--max-parallel",
            "2",
            "--label",
            "pool=docker",
            "--label",
            "exec=docker",
            "--pull-timeout",
            "20",
        )
        c.add_agent(
            "small",
            "--executor",
            "docker",
            "--max-parallel",
            "1",
            "--label",
            "pool=small",
            "--label",
            "exec=docker",
            "--reserve-memory-mb",
            str(host_memory_mb() - 512),
        )
        c.add_agent(
            "process", "--executor", "process", "--max-parallel", "2", "--label", "pool=process"
        )
        yield c
    finally:
        c.close()
        remove_containers_of(c.root)


@pytest.fixture(scope="session")
async def api(cluster: Cluster) -> AsyncIterator[BerthClient]:
    async with BerthClient(cluster.sched.url, cluster.sched.admin_token, timeout=30) as client:
        await wait_for_nodes(client, list(cluster.agents), timeout=60)
        yield client


# --- helpers ---------------------------------------------------------------------------


def host_memory_mb() -> int:
    import psutil

    return int(psutil.virtual_memory().total // (1024 * 1024))


def spec(
    command: str | list[str] | None,
    pool: str,
    *,
    image: str = IMAGE,
    timeout_s: float = 120.0,
    cpu: float = 0.5,
    memory_mb: int = 64,
    **extra: Any,
) -> JobSpec:
    """A job for one pool of the session's agents (``pool`` may be ``label=value``)."""
    key, _, value = pool.rpartition("=")
    return JobSpec(
        image=image,
        command=command,
        timeout_s=timeout_s,
        resources=JobResources(cpu=cpu, memory_mb=memory_mb),
        constraints=Constraints(labels={key or "pool": value}),
        **extra,
    )


async def poll(predicate: Any, timeout: float, interval: float = 0.1, what: str = "") -> Any:
    """Poll an async or plain predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        await asyncio.sleep(interval)


async def wait_state(
    client: BerthClient, job_id: str, states: set[str], timeout: float = 60.0
) -> Job:
    async def check() -> Job | None:
        job = await client.get_job(job_id)
        return job if job.state in states else None

    job: Job = await poll(check, timeout, what=f"job {job_id} to reach {sorted(states)}")
    return job


async def wait_done(client: BerthClient, job_id: str, timeout: float = 60.0) -> Job:
    return await wait_state(client, job_id, TERMINAL, timeout)


async def wait_for_nodes(client: BerthClient, names: list[str], timeout: float = 30.0) -> None:
    async def check() -> bool:
        nodes = (await client.list_nodes()).nodes
        up = {n.name for n in nodes if n.state in ("idle", "busy")}
        return set(names) <= up

    await poll(check, timeout, interval=0.2, what=f"nodes {names} to register")


async def node_named(client: BerthClient, name: str) -> Node:
    for n in (await client.list_nodes()).nodes:
        if n.name == name:
            return n
    raise AssertionError(f"no node named {name}")


async def job_logs(client: BerthClient, sched: SchedulerProcess, job: Job) -> bytes:
    """The stored output of the job's current attempt.

    Read through the API's log route when the scheduler has one; otherwise straight
    from the scheduler's SQLite store (read-only).
    """
    try:
        return await client.request(
            "GET", f"/api/v1/jobs/{job.id}/logs", params={"attempt": job.attempt, "offset": 0}
        )
    except BerthError as e:
        if e.code not in ("not_found", "method_not_allowed"):
            raise
    import sqlite3

    db = sched.state_dir / "berth.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT data FROM logs WHERE job_id = ? AND attempt = ? ORDER BY offset",
            (job.id, job.attempt),
        ).fetchall()
    finally:
        conn.close()
    return b"".join(bytes(r[0]) for r in rows)


def containers(label: str, *, all_states: bool = False) -> list[str]:
    """Ids of containers with a label (``key`` or ``key=value``)."""
    cmd = ["docker", "ps", "-q", "--filter", f"label={label}"]
    if all_states:
        cmd.insert(2, "-a")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out.split()


def remove_containers_of(root: Path) -> None:
    """Remove every container of nodes whose agents kept their state under ``root``."""
    import json

    for ident in root.glob("*/node.json"):
        node_id = json.loads(ident.read_text())["node_id"]
        ids = containers(f"berth.node={node_id}", all_states=True)
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)

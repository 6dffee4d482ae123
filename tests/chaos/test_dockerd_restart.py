"""dockerd restarts while a real docker-executor agent runs a job.

dockerd is stopped with SIGTERM, as a service manager restarts it, and started again
with the command line and environment it had. Without live-restore (the default, and
this machine's setting) stopping dockerd stops the job's container, so the honest
outcome is: the agent keeps waiting through the outage, learns the container's exit
once dockerd answers again, reports the attempt failed, and the retry completes; a
job submitted afterwards completes too. With live-restore the container would
survive and attempt 1 would complete; the test accepts exactly these two outcomes
and records which one happened.

Other tests on this machine use dockerd, so the outage is kept short (the job stops
at once on SIGTERM) and dockerd is left running whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.client import BerthClient
from common.models import Constraints, JobResources, JobSpec
from tests.chaos.conftest import Figures
from tests.e2e.conftest import (
    AgentProcess,
    containers,
    job_logs,
    poll,
    remove_containers_of,
    wait_done,
    wait_for_nodes,
)
from tests.support import SchedulerProcess

pytestmark = pytest.mark.docker

DOCKERD_LOG = Path("/var/log/berth-test-dockerd.log")
#: how long dockerd may take to stop (it stops every container first) and to start
STOP_TIMEOUT_S = 45.0
START_TIMEOUT_S = 60.0
#: stops at once on SIGTERM: busybox as PID 1 would ignore it and hold dockerd's stop
JOB = "echo started; trap 'echo terminated; exit 143' TERM; sleep 15 & wait; echo finished"


def _dockerd_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "dockerd" and _alive(int(entry.name)):
                return int(entry.name)
        except OSError:
            continue
    return None


def _alive(pid: int) -> bool:
    """Running, not a zombie (dockerd's parent may not reap it at once)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("State:")), "Z")
    return state != "Z"


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Dockerd:
    """The running dockerd: how it was started, so that it can be started again."""

    argv: list[str]
    env: dict[str, str]
    cwd: str

    @classmethod
    def find(cls) -> Dockerd:
        pid = _dockerd_pid()
        if pid is None:
            return cls(["dockerd"], dict(os.environ), "/")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        raw_env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(e.decode().split("=", 1) for e in raw_env if b"=" in e)
        return cls(
            [a.decode() for a in argv if a],
            env or dict(os.environ),
            os.readlink(f"/proc/{pid}/cwd"),
        )

    def stop(self) -> float:
        """SIGTERM and wait for it to exit (SIGKILL past the bound); seconds taken."""
        t0 = time.monotonic()
        pid = _dockerd_pid()
        if pid is None:
            return 0.0
        os.kill(pid, signal.SIGTERM)
        deadline = t0 + STOP_TIMEOUT_S
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.1)
        return time.monotonic() - t0

    def start(self) -> float:
        """Start it detached (it must outlive the tests) and wait for `docker info`."""
        t0 = time.monotonic()
        if _dockerd_pid() is None:
            with open(DOCKERD_LOG, "ab") as log:
                subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
        deadline = t0 + START_TIMEOUT_S
        while not _docker_answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not answer within {START_TIMEOUT_S:g} s")
            time.sleep(0.2)
        return time.monotonic() - t0


@pytest.fixture
def dockerd(docker_image: str) -> Iterator[Dockerd]:
    d = Dockerd.find()
    try:
        yield d
    finally:
        # Whatever happened, leave dockerd running for everyone else.
        d.start()


def _spec(command: str, name: str) -> JobSpec:
    return JobSpec(
        image="berth-test/busybox:1",
        name=name,
        command=command,
        resources=JobResources(cpu=0.2, memory_mb=32),
        constraints=Constraints(labels={"pool": "chaos-docker"}),
        # Attempts placed while dockerd is down fail at once (an infrastructure
        # failure); the backoff of five retries outlasts a slow dockerd restart.
        max_retries=5,
        retry_delay_s=1.0,
        timeout_s=120,
    )


async def test_agent_recovers_when_dockerd_restarts_during_a_job(
    tmp_path: Path, dockerd: Dockerd, figures: Figures
) -> None:
    sched = SchedulerProcess(
        tmp_path / "state", "--heartbeat-interval", "0.5", "--node-ttl", "60"
    ).start()
    agent = AgentProcess(
        sched,
        "docker",
        tmp_path / "docker",
        "--executor",
        "docker",
        "--max-parallel",
        "1",
        "--label",
        "pool=chaos-docker",
    )
    try:
        async with BerthClient(sched.url, sched.admin_token, timeout=30) as api:
            agent.start()
            await wait_for_nodes(api, ["docker"], timeout=60)
            job = await api.submit_job(_spec(JOB, "during-restart"))
            figures.jobs = figures.acknowledged = 1

            async def started() -> bool:
                current = await api.get_job(job.id)
                return b"started" in await job_logs(api, sched, current)

            await poll(started, 60, what="the job's container to start")
            assert containers(f"berth.job={job.id}")

            figures.faults = 1
            figures.extra["dockerd_stop_seconds"] = round(dockerd.stop(), 2)
            figures.extra["dockerd_start_seconds"] = round(dockerd.start(), 2)

            done = await wait_done(api, job.id, timeout=90)
            after = await api.submit_job(_spec("echo after-restart", "after-restart"))
            figures.jobs = figures.acknowledged = 2
            later = await wait_done(api, after.id, timeout=60)

            ended = [done, later]
            figures.terminal = len(ended)
            figures.losses = sum(1 for j in ended if j.state != "completed")
            figures.duplicates = sum(
                1 for j in ended if any(a.state == "completed" for a in j.attempts)
            )
            figures.extra["attempts_of_interrupted_job"] = done.attempt
            figures.extra["first_attempt"] = (
                {
                    "state": done.attempts[0].state,
                    "exit_code": done.attempts[0].exit_code,
                    "error": done.attempts[0].error,
                }
                if done.attempts
                else {"state": done.state, "exit_code": done.exit_code}
            )
            assert (done.state, done.exit_code) == ("completed", 0), done
            if done.attempt == 1:
                # The container survived the restart (live-restore): it ran to the end.
                assert b"finished" in await job_logs(api, sched, done)
            else:
                # dockerd stopped the container: attempt 1 failed, a retry completed.
                first = done.attempts[0]
                assert first.attempt == 1 and first.state == "failed", first
                assert not any(a.state == "completed" for a in done.attempts)
            assert (later.state, later.exit_code, later.attempt) == ("completed", 0, 1), later
            assert b"after-restart" in await job_logs(api, sched, later)
    finally:
        agent.kill()
        sched.kill()
        dockerd.start()
        remove_containers_of(tmp_path)

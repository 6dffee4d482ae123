"""Container hardening and the node allow-list, proven by jobs run through Berth.

Every test submits a job to a real scheduler, which places it on a real agent with the
docker executor, and reads the job's outcome and output back through the API. Two
agents of the session's cluster belong to this module:

- ``hard`` (pool=hard): allows nothing beyond the sandbox; a pids limit of 64 so a fork
  bomb meets it quickly;
- ``open`` (pool=open): ``--allow privileged --allow host-network --allow mount:DIR``.

An agent refusing a job is shown on a node whose allow-list was narrowed while jobs
were assigned to it (the scheduler itself sends no job to a node that does not allow
it), and with a link that leads a mount out of the allowed directory.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common import policy
from common.client import BerthClient
from common.models import Job, Mount
from tests.e2e.conftest import (
    AgentProcess,
    Cluster,
    containers,
    job_logs,
    node_named,
    poll,
    spec,
    wait_done,
    wait_for_nodes,
    wait_state,
)
from tests.support import SchedulerProcess

pytestmark = pytest.mark.docker

#: the pids limit of the ``hard`` agent
PIDS_LIMIT = 64


@dataclass
class Agents:
    hard: AgentProcess
    open: AgentProcess
    #: the directory the ``open`` agent allows mounts from
    allowed: Path
    #: a directory beside it, not allowed
    outside: Path


@pytest.fixture(scope="module")
def agents(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Agents:
    root = tmp_path_factory.mktemp("mounts")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    hard = cluster.agents.get("hard") or cluster.add_agent(
        "hard",
        "--executor",
        "docker",
        "--max-parallel",
        "2",
        "--label",
        "pool=hard",
        "--pids-limit",
        str(PIDS_LIMIT),
    )
    open_ = cluster.agents.get("open") or cluster.add_agent(
        "open",
        "--executor",
        "docker",
        "--max-parallel",
        "2",
        "--label",
        "pool=open",
        "--allow",
        "privileged",
        "--allow",
        "host-network",
        "--allow",
        f"mount:{allowed}",
    )
    return Agents(hard, open_, allowed, outside)


async def _run(api: BerthClient, cluster: Cluster, job_spec: Any) -> tuple[Job, str]:
    """Submit, wait for the end; the job and its output."""
    await wait_for_nodes(api, ["hard", "open"], timeout=60)
    job = await api.submit_job(job_spec)
    done = await wait_done(api, job.id, timeout=120)
    return done, (await job_logs(api, cluster.sched, done)).decode(errors="replace")


def _created(job_id: str, since: float) -> list[str]:
    """Containers dockerd created for a job since ``since`` (its event log: a container
    removed since then still counts)."""
    out = subprocess.run(
        [
            "docker",
            "events",
            "--since",
            f"{since:.3f}",
            "--until",
            f"{time.time() + 1:.3f}",
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            f"label=berth.job={job_id}",
            "--format",
            "{{.Actor.ID}}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.split()


@functools.cache
def _host_runs_privileged(image: str) -> bool:
    """Whether plain `docker run --privileged` works on this host."""
    probe = subprocess.run(
        ["docker", "run", "--rm", "--privileged", "--network", "none", image, "true"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"docker run --privileged on this host: exit {probe.returncode} {probe.stderr.strip()}")
    return probe.returncode == 0


def _value(output: str, key: str) -> str:
    match = re.search(rf"^{re.escape(key)}=(.*)$", output, re.MULTILINE)
    assert match, f"no {key}= in the output:\n{output}"
    return match.group(1).strip()


# --- the sandbox ---------------------------------------------------------------------------


async def test_no_docker_socket_is_reachable_inside(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    script = (
        "for s in /var/run/docker.sock /run/docker.sock; do "
        "  if [ -e $s ]; then echo found=$s; fi; "
        "done; "
        "find / \\( -path /proc -o -path /sys \\) -prune -o -type s -print | sed 's/^/socket=/'; "
        "grep -c docker.sock /proc/mounts | sed 's/^/mounted=/'; "
        "echo DOCKER_HOST=$DOCKER_HOST; echo searched"
    )
    done, output = await _run(api, cluster, spec(script, "hard"))
    assert done.state == "completed", output
    assert "searched" in output
    assert "found=" not in output
    assert [line for line in output.splitlines() if line.startswith("socket=")] == []
    assert _value(output, "mounted") == "0"
    assert _value(output, "DOCKER_HOST") == ""


async def test_root_in_the_container_cannot_do_privileged_operations(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    script = (
        "echo uid=$(id -u); "
        "mknod /tmp/null c 1 3; echo mknod=$?; "
        "touch /tmp/f; chown 1 /tmp/f; echo chown=$?; "
        "ip link set lo down; echo ip=$?"
    )
    done, output = await _run(api, cluster, spec(script, "hard"))
    assert done.state == "completed", output
    assert _value(output, "uid") == "0"  # root, and still not allowed
    for op in ("mknod", "chown", "ip"):
        assert _value(output, op) != "0", output
    assert output.count("Operation not permitted") >= 3, output


async def test_a_job_has_no_network_unless_it_asks(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    listing = "ls /sys/class/net"
    done, output = await _run(api, cluster, spec(listing, "hard"))
    assert (done.state, output.split()) == ("completed", ["lo"])
    done, output = await _run(api, cluster, spec(listing, "hard", network="bridge"))
    assert done.state == "completed"
    assert sorted(output.split()) == ["eth0", "lo"]


async def test_the_pids_limit_stops_a_fork_bomb_and_the_agent_keeps_serving(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    # Forks sleepers until the kernel refuses, counting each one; builtins only after.
    script = (
        "( n=0; while [ $n -lt 100000 ]; do sleep 600 & n=$((n+1)); echo forked=$n; done ); "
        "echo bomb_exit=$?; "
        "for d in /sys/fs/cgroup/pids /sys/fs/cgroup; do "
        "  if [ -r $d/pids.max ]; then "
        "    read max < $d/pids.max; read peak < $d/pids.peak; "
        "    echo pids_max=$max; echo pids_peak=$peak; break; "
        "  fi; "
        "done; "
        "exit 3"
    )
    done, output = await _run(api, cluster, spec(script, "hard", timeout_s=60, memory_mb=128))
    assert (done.state, done.exit_code) == ("failed", 3), output
    forked = [int(n) for n in re.findall(r"^forked=(\d+)$", output, re.MULTILINE)]
    assert forked, output
    assert "can't fork" in output
    # The shell, its subshell and the sleepers all count against the limit.
    assert max(forked) + 2 <= PIDS_LIMIT
    assert int(_value(output, "pids_max")) == PIDS_LIMIT
    assert int(_value(output, "pids_peak")) <= PIDS_LIMIT
    # The sleepers went with the container.
    await poll(lambda: not containers(f"berth.job={done.id}", all_states=True), 30, what="removal")
    after, text = await _run(api, cluster, spec("echo still serving", "hard"))
    assert (after.state, text) == ("completed", "still serving\n")
    assert (await node_named(api, "hard")).state in ("idle", "busy")


async def test_a_read_only_root_keeps_tmp_and_the_workspace_writable(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    script = (
        "touch /x; echo root=$?; "
        "echo scratch > /tmp/y; echo tmp=$?; "
        "echo kept > /workspace/out/result.txt; echo workspace=$?; "
        "echo saved > /checkpoint/state; echo checkpoint=$?"
    )
    done, output = await _run(api, cluster, spec(script, "hard", read_only=True))
    assert done.state == "completed", output
    assert _value(output, "root") != "0"
    assert "Read-only file system" in output
    assert _value(output, "tmp") == "0"
    assert _value(output, "workspace") == "0"
    assert _value(output, "checkpoint") == "0"
    assert done.outputs is not None  # what it wrote was kept
    # Without the flag the same root filesystem is writable: the flag made the difference.
    done, output = await _run(api, cluster, spec("touch /x; echo root=$?", "hard"))
    assert _value(output, "root") == "0"


@pytest.mark.parametrize(("user", "ids"), [("1000", "1000 0"), ("1000:1000", "1000 1000")])
async def test_a_job_runs_as_the_user_it_names(
    api: BerthClient, cluster: Cluster, agents: Agents, user: str, ids: str
) -> None:
    done, output = await _run(api, cluster, spec("echo $(id -u) $(id -g)", "hard", user=user))
    assert (done.state, output.strip()) == ("completed", ids)


async def test_the_process_executor_refuses_what_it_cannot_honour(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    done, output = await _run(api, cluster, spec("touch /x", "process", read_only=True, user="1"))
    assert done.state == "failed"
    assert done.error is not None
    assert done.error.startswith("the process executor cannot honour read_only, user")
    assert output == ""  # nothing ran


# --- the allow-list ------------------------------------------------------------------------


async def test_an_agent_that_allows_them_runs_privileged_host_network_and_mount_jobs(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    since = time.time()
    done, output = await _run(
        api, cluster, spec("mknod /tmp/null c 1 3 && echo made", "open", privileged=True)
    )
    assert _created(done.id, since), "not refused: dockerd was asked for the container"
    if _host_runs_privileged(cluster.image):
        assert (done.state, output) == ("completed", "made\n"), done.error
    else:
        # Where dockerd itself cannot give every capability (its own bounding set lacks
        # some, as in some VMs and nested containers), `docker run --privileged` fails
        # too: the job reaches dockerd and fails with dockerd's reason, not the policy's.
        assert done.state == "failed"
        assert done.error is not None
        assert done.error.startswith("container could not start:"), done.error
        assert "unable to apply caps" in done.error

    done, output = await _run(api, cluster, spec("ls /sys/class/net", "open", network="host"))
    assert done.state == "completed"
    # The host's interfaces (veths come and go with other containers).
    host = {name for name in os.listdir("/sys/class/net") if not name.startswith("veth")}
    assert host - {"lo"}, "the host has an interface besides lo"
    assert host <= set(output.split()), output

    (agents.allowed / "hello.txt").write_text("from the host\n")
    mounted = spec(
        "cat /data/hello.txt; if touch /data/new; then echo writable; else echo read-only; fi",
        "open",
        mounts=(Mount(str(agents.allowed), "/data"),),
    )
    done, output = await _run(api, cluster, mounted)
    assert done.state == "completed", output
    # stdout and stderr are one stream, but their order across the two is not kept.
    assert "from the host\n" in output
    assert "read-only\n" in output and "writable" not in output
    assert "Read-only file system" in output
    assert not (agents.allowed / "new").exists()


async def test_the_scheduler_keeps_a_job_off_nodes_that_do_not_allow_it(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    await wait_for_nodes(api, ["hard", "open"], timeout=60)
    job = await api.submit_job(spec("true", "hard", privileged=True))
    try:

        async def waiting() -> bool:
            seen = await api.get_job(job.id)
            # The nodes of its pool do not allow it; the others do not match its pool.
            return (
                seen.state == "queued"
                and "not allow privileged mode (--allow privileged)" in (seen.reason or "")
                and (seen.pending or {}).get("allow_list", 0) >= 1
            )

        await poll(waiting, 30, what="the job to wait for a node that allows it")
        assert (await node_named(api, "hard")).allow == []
        assert (await node_named(api, "open")).allow == [
            "privileged",
            "host-network",
            f"mount:{agents.allowed}",
        ]
    finally:
        await api.cancel_job(job.id)


async def test_a_link_cannot_lead_a_mount_out_of_the_allowed_directory(
    api: BerthClient, cluster: Cluster, agents: Agents
) -> None:
    (agents.outside / "secret.txt").write_text("not for jobs\n")
    link = agents.allowed / "escape"
    if not link.is_symlink():
        link.symlink_to(agents.outside)
    since = time.time()
    # As written the path is inside the allowed directory, so the scheduler places it;
    # the agent resolves the link and refuses.
    done, output = await _run(
        api, cluster, spec("cat /data/secret.txt", "open", mounts=(Mount(str(link), "/data"),))
    )
    assert done.state == "failed"
    assert done.error == policy.refusal(f"mount:{link}")
    assert output == ""
    assert _created(done.id, since) == []


@pytest.fixture
def narrowed(tmp_path: Path, docker_image: str) -> Iterator[tuple[SchedulerProcess, Path, Path]]:
    """A scheduler of its own with slow heartbeats, so a node stays healthy for a while
    after its agent died; the agent's state dir and an allowed directory."""
    sched = SchedulerProcess(
        tmp_path / "scheduler", "--heartbeat-interval", "10", "--node-ttl", "120"
    ).start()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    try:
        yield sched, tmp_path / "narrowed", allowed
    finally:
        sched.kill()


async def test_an_agent_refuses_assignments_its_allow_list_does_not_permit(
    narrowed: tuple[SchedulerProcess, Path, Path],
) -> None:
    sched, state_dir, allowed = narrowed
    # A slot for each of the three jobs, so all are assigned while the agent is away.
    base = ("--executor", "docker", "--max-parallel", "3", "--label", "pool=narrowed")
    allow = ("--allow", "privileged", "--allow", "host-network", "--allow", f"mount:{allowed}")
    agent = AgentProcess(sched, "narrowed", state_dir, *base, *allow).start()
    try:
        async with BerthClient(sched.url, sched.admin_token, timeout=30) as api:
            await wait_for_nodes(api, ["narrowed"], timeout=60)
            # The agent goes away; its node stays healthy (and allowing) until it is late.
            agent.kill()
            since = time.time()
            asks: dict[str, dict[str, Any]] = {
                "privileged": {"privileged": True},
                "host-network": {"network": "host"},
                f"mount:{allowed}": {"mounts": (Mount(str(allowed), "/data"),)},
            }
            jobs = {
                need: await api.submit_job(spec("echo ran", "narrowed", **ask))
                for need, ask in asks.items()
            }
            for job in jobs.values():
                await wait_state(api, job.id, {"assigned"}, timeout=20)
            # It comes back allowing nothing, and is handed what was assigned to it.
            agent = AgentProcess(sched, "narrowed", state_dir, *base).start()
            for need, job in jobs.items():
                done = await wait_done(api, job.id, timeout=60)
                assert done.state == "failed"
                assert done.error == policy.refusal(need)
                assert done.exit_code is None
                assert await job_logs(api, sched, done) == b""
                assert _created(job.id, since) == []
                assert containers(f"berth.job={job.id}", all_states=True) == []
            assert (await node_named(api, "narrowed")).allow == []
            # A plain job still runs there: only what the list does not permit is refused.
            plain = await api.submit_job(spec("echo ran", "narrowed"))
            done = await wait_done(api, plain.id, timeout=60)
            assert (done.state, await job_logs(api, sched, done)) == ("completed", b"ran\n")
            assert _created(plain.id, since), "the event log shows created containers"
    finally:
        agent.kill()

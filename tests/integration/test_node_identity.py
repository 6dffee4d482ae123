"""A node's name belongs to the agent that holds its node token.

The join token registers new nodes; it cannot take over a registered one. Before this
rule, registering with the join token under a live node's name returned that node's id
and a fresh token and dropped the real agent's token, so the holder of the join token
could forge logs and a ``completed, exit 0`` report for the node's running job and was
handed the node's next job, environment included.

Real scheduler process, real HTTP over loopback; the agents are simulated over HTTP,
and the last test runs real ``berth agent`` processes (process executor) and the real
``berth node forget`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import REPO, Api, SchedulerProcess, SimAgent, wait_until

SPEC = {
    "name": "nightly",
    "image": "busybox",
    "command": ["sleep", "1000"],
    "env": {"API_KEY": "s3cret"},
    "resources": {"cpu": 0.1, "memory_mb": 64},
    "max_retries": 1,
}


def _registration(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "capacity": {"cpu": 4, "memory_mb": 8192},
        "max_parallel": 4,
        "executor": "process",
        **extra,
    }


async def _running(admin: Api, agent: SimAgent) -> str:
    """Submit a job and have ``agent`` start it; returns its id."""
    _, job = await admin.post("/api/v1/jobs", SPEC)
    assert [a["job_id"] for a in await agent.poll(wait=5)] == [job["id"]]
    assert (await agent.report(job["id"], "running"))[0] == 200
    job_id: str = job["id"]
    return job_id


async def test_the_join_token_cannot_take_over_a_registered_node_name(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    real = SimAgent(http, sched.url, sched.join_token, "w1")
    await real.register()
    job_id = await _running(admin, real)
    _, before = await admin.get(f"/api/v1/nodes/{real.node_id}")

    impostor = Api(http, sched.url, sched.join_token)
    status, body = await impostor.post("/api/v1/nodes/register", _registration("w1"))
    assert status == 409, body
    assert body["error"]["details"]["field"] == "$.node_token"
    assert "berth node forget w1" in body["error"]["message"]
    # A made-up node token proves nothing either.
    forged = _registration("w1", node_token="not-the-token")
    assert (await impostor.post("/api/v1/nodes/register", forged))[0] == 409

    # The real agent's token still works and the node is as it was.
    assert await real.heartbeat() == []
    _, after = await admin.get(f"/api/v1/nodes/{real.node_id}")
    assert (after["id"], after["running_jobs"], after["state"]) == (
        before["id"],
        [job_id],
        "busy",
    )
    # What the join token sends in the node's name is refused and changes nothing.
    report = {"attempt": 1, "state": "completed", "exit_code": 0}
    path = f"/api/v1/nodes/{real.node_id}/jobs/{job_id}/report"
    assert (await impostor.post(path, report))[0] == 403
    _, job = await admin.get(f"/api/v1/jobs/{job_id}")
    assert (job["state"], job["exit_code"]) == ("running", None)
    # The node's next job, with its environment, goes to the real agent.
    _, second = await admin.post("/api/v1/jobs", SPEC)
    assert [a["job_id"] for a in await real.poll(wait=5)] == [second["id"]]


async def test_an_agent_that_kept_its_node_token_registers_again_as_the_same_node(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    real = SimAgent(http, sched.url, sched.join_token, "w1")
    await real.register()
    job_id = await _running(admin, real)
    join = Api(http, sched.url, sched.join_token)
    status, body = await join.post(
        "/api/v1/nodes/register", _registration("w1", node_token=real.token)
    )
    assert status == 200, body
    # Same node, same token: a reply lost on the way cannot lock the agent out.
    assert (body["node_id"], body["node_token"]) == (real.node_id, real.token)
    assert await real.heartbeat() == []
    _, job = await admin.get(f"/api/v1/jobs/{job_id}")
    assert job["state"] == "running"


async def test_another_nodes_token_does_not_prove_a_name(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    a = SimAgent(http, sched.url, sched.join_token, "a")
    b = SimAgent(http, sched.url, sched.join_token, "b")
    await a.register()
    await b.register()
    join = Api(http, sched.url, sched.join_token)
    status, body = await join.post("/api/v1/nodes/register", _registration("a", node_token=b.token))
    assert status == 409, body
    assert await a.heartbeat() == [] and await b.heartbeat() == []


async def test_an_admin_forgets_a_node_and_its_name_may_be_registered_again(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    real = SimAgent(http, sched.url, sched.join_token, "w1")
    await real.register()
    job_id = await _running(admin, real)
    _, created = await admin.post("/api/v1/tokens", {"role": "submit", "name": "ci"})
    submitter = Api(http, sched.url, created["token"])
    path = f"/api/v1/nodes/{real.node_id}"

    assert (await submitter.call("DELETE", path))[0] == 403
    status, body = await admin.call("DELETE", path)
    assert status == 409, body
    assert "force" in body["error"]["message"]
    assert await real.heartbeat() == []

    status, body = await admin.call("DELETE", path, params={"force": "1"})
    assert status == 200, body
    assert (body["id"], body["name"], body["lost_jobs"]) == (real.node_id, "w1", [job_id])
    # Its job was lost with it and is retried elsewhere; its token stopped working.
    _, job = await admin.get(f"/api/v1/jobs/{job_id}")
    assert (job["state"], job["attempt"]) == ("queued", 2)
    assert (await real.api.post(f"/api/v1/nodes/{real.node_id}/heartbeat", {}))[0] == 401
    assert (await admin.get(path))[0] == 404

    fresh = SimAgent(http, sched.url, sched.join_token, "w1")
    await fresh.register()
    assert fresh.node_id != real.node_id
    _, audit = await admin.get("/api/v1/audit", params={"action": "node.forget"})
    [entry] = audit["entries"]
    assert (entry["target"], entry["details"]["name"]) == (real.node_id, "w1")

    # Forgotten for good: a restarted scheduler does not bring the node back.
    sched.kill()
    sched.start()
    admin = Api(http, sched.url, sched.admin_token)
    _, nodes = await admin.get("/api/v1/nodes")
    assert [(n["id"], n["name"]) for n in nodes["nodes"]] == [(fresh.node_id, "w1")]


# --- real agent processes ----------------------------------------------------------------


def _start_agent(sched: SchedulerProcess, name: str, state_dir: Path) -> subprocess.Popen[bytes]:
    token_file = state_dir.parent / f"{state_dir.name}.join"
    token_file.write_text(sched.join_token)
    log = open(state_dir.parent / f"{state_dir.name}.log", "ab")  # noqa: SIM115 - the child keeps it
    cmd = [
        *(sys.executable, "-c", "from cli.main import main; main()", "agent"),
        *("--scheduler", sched.url, "--join-token-file", str(token_file)),
        *("--state-dir", str(state_dir), "--name", name, "--executor", "process"),
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _log(state_dir: Path) -> str:
    return (state_dir.parent / f"{state_dir.name}.log").read_text(errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


async def test_a_restarted_agent_keeps_its_node_and_one_without_its_state_is_told_what_to_do(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api, tmp_path: Path
) -> None:
    async def nodes() -> list[tuple[str, str]]:
        _, body = await admin.get("/api/v1/nodes")
        return [(n["id"], n["state"]) for n in body["nodes"]]

    kept = tmp_path / "kept"
    agent = _start_agent(sched, "host1", kept)
    try:
        await wait_until(lambda: _registered(kept, 1), timeout=30)
        [(node_id, _)] = await nodes()
        # Killed and started again with its state dir: the same node, at once.
        _stop(agent)
        agent = _start_agent(sched, "host1", kept)
        await wait_until(lambda: _registered(kept, 2), timeout=30)
        assert [n for n, _ in await nodes()] == [node_id]
        assert f"(node {node_id}," in _log(kept).split("registered as host1")[-1]
    finally:
        _stop(agent)

    # The same name from an agent that lost its state is refused with what to do.
    lost = tmp_path / "lost"
    agent = _start_agent(sched, "host1", lost)
    try:
        assert agent.wait(timeout=30) == 2
    finally:
        _stop(agent)
    assert "berth node forget host1" in _log(lost)

    env = {**os.environ, "BERTH_ADDR": sched.url, "BERTH_TOKEN": sched.admin_token}
    forget = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "node", "forget", "host1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forget.returncode == 0, forget.stderr
    assert node_id in forget.stdout
    agent = _start_agent(sched, "host1", lost)
    try:
        await wait_until(lambda: _registered(lost, 1), timeout=30)
        [(new_id, _)] = await nodes()
        assert new_id != node_id
    finally:
        _stop(agent)


def _registered(state_dir: Path, times: int) -> bool:
    path = state_dir.parent / f"{state_dir.name}.log"
    return path.exists() and _log(state_dir).count("registered as host1") >= times

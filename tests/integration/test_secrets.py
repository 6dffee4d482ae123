"""Stored secrets over real HTTP, with a real scheduler process and a real process agent,
on each store: who may set, see and use which secret; that a job gets its secret's
value and its log shows it masked; that no route or stream shows a value to anyone;
and that deleting a secret fails the queued jobs that still need it.

One scheduler and one agent serve the whole module: each test makes secrets and
tokens of its own names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    REPO,
    Api,
    SchedulerProcess,
    SimAgent,
    start_process_agent,
    wait_until,
)

#: the value every test looks for: it must show nowhere but in the job's environment
VALUE = "s3cr3t-Value-7f2a9c"
SHARED_VALUE = "shared-Value-41c0d8"
#: a job that prints its secret in several ways, and the shared one
PRINTS = 'echo "token=$T"; echo "$T$T"; echo "shared=$S"; echo done'


@dataclass
class Vault:
    sched: SchedulerProcess
    agent_log: Path
    admin: Api
    alice: Api
    bob: Api
    reader: Api
    #: a registered node of no capacity: its token may see its own (empty) assignments
    other_node: SimAgent


@pytest.fixture(scope="module")
def vault_sched(
    tmp_path_factory: pytest.TempPathFactory, store_kind: str
) -> Iterator[tuple[SchedulerProcess, Path]]:
    where = tmp_path_factory.mktemp("secrets")
    proc = SchedulerProcess(where / "state", "--heartbeat-interval", "0.5").start()
    agent = start_process_agent(proc, where, "vault-agent")
    yield proc, where / "vault-agent.log"
    agent.kill()
    agent.wait(timeout=30)
    proc.kill()


@pytest.fixture(scope="module")
async def vault_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def _token(admin: Api, role: str, name: str) -> Api:
    status, made = await admin.post("/api/v1/tokens", {"role": role, "name": name})
    assert status == 201, made
    return Api(admin.session, admin.url, made["token"])


@pytest.fixture(scope="module")
async def vault(
    vault_sched: tuple[SchedulerProcess, Path], vault_http: aiohttp.ClientSession
) -> Vault:
    sched, agent_log = vault_sched
    admin = Api(vault_http, sched.url, sched.admin_token)
    other = SimAgent(vault_http, sched.url, sched.join_token, "no-room", cpu=0, memory_mb=0)
    await other.register()
    return Vault(
        sched,
        agent_log,
        admin,
        await _token(admin, "submit", "alice"),
        await _token(admin, "submit", "bob"),
        await _token(admin, "read", "reader"),
        other,
    )


async def _set(api: Api, name: str, value: str, **extra: Any) -> tuple[int, Any]:
    return await api.post("/api/v1/secrets", {"name": name, "value": value, **extra})


def _job(command: str, env: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "image": "busybox",
        "command": command,
        "env": env,
        "resources": {"cpu": 0.1, "memory_mb": 16},
        **extra,
    }


async def _submit(api: Api, spec: dict[str, Any]) -> str:
    status, job = await api.post("/api/v1/jobs", spec)
    assert status == 201, job
    return str(job["id"])


async def _until(api: Api, job_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status, job = await api.get(f"/api/v1/jobs/{job_id}")
        assert status == 200, job
        return job if job["state"] in states else None

    found: dict[str, Any] = await wait_until(reached, timeout=timeout, interval=0.1)
    return found


async def _log(api: Api, job_id: str, **params: Any) -> bytes:
    status, body = await api.call("GET", f"/api/v1/jobs/{job_id}/logs", params=params)
    assert status == 200, body
    return body if isinstance(body, bytes) else json.dumps(body).encode()


# --- who may do what -------------------------------------------------------------------------


async def test_secret_routes_follow_the_roles(vault: Vault) -> None:
    status, made = await _set(vault.alice, "alice-db", VALUE)
    assert status == 201, made
    assert made["owner"] == "alice" and made["shared"] is False and "value" not in made
    status, again = await _set(vault.alice, "alice-db", VALUE + "2")
    assert status == 200 and again["created_at"] == made["created_at"]
    status, shared = await _set(vault.admin, "team-db", SHARED_VALUE, shared=True)
    assert status == 201 and shared["shared"] is True
    # A new value without "shared" leaves it shared.
    status, shared = await _set(vault.admin, "team-db", SHARED_VALUE)
    assert status == 200 and shared["shared"] is True and shared["owner"] == "admin"

    # Refusals, each naming what it refuses.
    status, body = await _set(vault.bob, "bob-db", VALUE, shared=True)
    assert status == 403 and body["error"]["details"]["field"] == "$.shared"
    status, body = await _set(vault.bob, "alice-db", "mine now")
    assert status == 409 and body["error"]["details"]["field"] == "$.name"
    status, body = await _set(vault.bob, "team-db", "mine now")
    assert status == 403, body
    status, body = await _set(vault.reader, "reader-db", VALUE)
    assert status == 403, body
    status, body = await _set(vault.alice, "bad/name", VALUE)
    assert status in (400, 404, 405), body
    status, body = await _set(vault.alice, "empty", "")
    assert status == 400 and body["error"]["details"]["field"] == "$.value"

    async def names(api: Api) -> set[str]:
        status, listing = await api.get("/api/v1/secrets")
        assert status == 200, listing
        return {s["name"] for s in listing["secrets"]}

    assert {"alice-db", "team-db"} <= await names(vault.admin)
    assert {"alice-db", "team-db"} <= await names(vault.reader)
    assert "alice-db" in await names(vault.alice)
    assert "alice-db" not in await names(vault.bob) and "team-db" in await names(vault.bob)
    assert (await vault.bob.get("/api/v1/secrets/alice-db"))[0] == 404
    assert (await vault.reader.get("/api/v1/secrets/alice-db"))[0] == 200
    status, body = await vault.bob.call("DELETE", "/api/v1/secrets/alice-db")
    assert status == 404, body
    status, body = await vault.alice.call("DELETE", "/api/v1/secrets/team-db")
    assert status == 403, body
    status, body = await vault.reader.call("DELETE", "/api/v1/secrets/alice-db")
    assert status == 403, body
    assert (await vault.admin.get("/api/v1/secrets/nowhere"))[0] == 404


async def test_a_job_may_not_name_another_owners_secret(vault: Vault) -> None:
    assert (await _set(vault.alice, "alice-only", VALUE))[0] == 201
    for name in ("alice-only", "no-such-secret"):
        spec = _job("true", {"PLAIN": "x", "TOKEN": {"secret": name}})
        status, body = await vault.bob.post("/api/v1/jobs", spec)
        assert status == 400, body
        error = body["error"]
        assert error["details"]["field"] == "$.env.TOKEN"
        assert name in error["message"] and VALUE not in json.dumps(body)
        status, body = await vault.bob.post(
            "/api/v1/jobs/batch", {"jobs": [_job("true", {}), spec]}
        )
        assert status == 400 and body["error"]["details"]["field"] == "$.jobs[1].env.TOKEN"
    status, body = await vault.bob.post(
        "/api/v1/schedules",
        {
            "name": "bob-nightly",
            "cron": "0 0 1 1 *",
            "job": _job("true", {"T": {"secret": "alice-only"}}),
        },
    )
    assert status == 400 and body["error"]["details"]["field"] == "$.job.env.T"


async def test_a_pull_secret_must_be_usable_and_the_process_executor_ignores_it(
    vault: Vault,
) -> None:
    creds = json.dumps({"registry": "127.0.0.1:1", "username": "u", "password": VALUE})
    assert (await _set(vault.alice, "alice-registry", creds))[0] in (200, 201)
    for name in ("alice-registry", "no-such-secret"):
        spec = _job("true", {}, image_pull_secret=name)
        status, body = await vault.bob.post("/api/v1/jobs", spec)
        assert status == 400 and body["error"]["details"]["field"] == "$.image_pull_secret"
        assert name in body["error"]["message"] and VALUE not in json.dumps(body)
    # The process agent pulls nothing: neither the image nor the policy stops the job.
    spec = _job(
        "echo ran",
        {},
        image="127.0.0.1:1/nowhere:1",
        image_pull_secret="alice-registry",
        pull_policy="never",
    )
    job = await _until(vault.alice, await _submit(vault.alice, spec), "completed", "failed")
    assert job["state"] == "completed", job
    assert job["spec"]["image_pull_secret"] == "alice-registry" and VALUE not in json.dumps(job)


# --- a job that uses its secret ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def printed(vault: Vault) -> str:
    """A job of alice's that printed her secret and a shared one, ended."""
    assert (await _set(vault.alice, "alice-token", VALUE))[0] in (200, 201)
    assert (await _set(vault.admin, "shared-token", SHARED_VALUE, shared=True))[0] in (200, 201)
    env = {"T": {"secret": "alice-token"}, "S": {"secret": "shared-token"}, "P": "plain"}
    job_id = await _submit(vault.alice, _job(PRINTS, env))
    job = await _until(vault.alice, job_id, "completed", "failed")
    assert job["state"] == "completed", job
    return job_id


async def test_a_job_that_prints_its_secret_gets_a_masked_log(vault: Vault, printed: str) -> None:
    log = await _log(vault.alice, printed)
    assert log == b"token=[masked]\n[masked][masked]\nshared=[masked]\ndone\n"
    _, job = await vault.alice.get(f"/api/v1/jobs/{printed}")
    assert job["spec"]["env"] == {
        "T": {"secret": "alice-token"},
        "S": {"secret": "shared-token"},
        "P": "plain",
    }


async def _read_stream(api: Api, path: str) -> bytes:
    """An SSE stream's replay and what follows it, until it is quiet for a moment."""
    headers = {"Authorization": f"Bearer {api.token}", "Accept": "text/event-stream"}
    got = b""
    async with api.session.get(api.url + path, headers=headers, params={"since": 0}) as r:
        if r.status != 200:  # another's job: refused, and its body is searched too
            return await r.read()
        while True:
            try:
                chunk = await asyncio.wait_for(r.content.readany(), 0.3)
            except TimeoutError:
                return got
            if not chunk:
                return got
            got += chunk


async def test_no_route_or_stream_shows_a_value_to_anyone(vault: Vault, printed: str) -> None:
    node = vault.other_node
    node_api = node.api
    paths = [
        "/api/v1/jobs",
        f"/api/v1/jobs/{printed}",
        f"/api/v1/jobs/{printed}/events",
        f"/api/v1/jobs/{printed}/logs",
        f"/api/v1/jobs/{printed}/usage",
        "/api/v1/events?since=0",
        "/api/v1/nodes",
        f"/api/v1/nodes/{node.node_id}",
        "/api/v1/stats",
        "/api/v1/secrets",
        "/api/v1/secrets/alice-token",
        "/api/v1/secrets/shared-token",
        "/api/v1/audit",
        "/api/v1/owners",
        "/api/v1/groups",
        "/api/v1/tokens",
        "/api/v1/schedulers",
        "/metrics",
    ]
    _, nodes = await vault.admin.get("/api/v1/nodes")
    paths += [f"/api/v1/nodes/{n['id']}" for n in nodes["nodes"]]
    seen = 0
    for api in (vault.admin, vault.alice, vault.bob, vault.reader, node_api):
        for path in paths:
            async with api.session.get(api.url + path, headers=api._headers()) as r:
                body = await r.read()
            seen += r.status == 200
            for value in (VALUE, SHARED_VALUE):
                assert value.encode() not in body, (path, api.token)
        for path in ("/api/v1/events", f"/api/v1/jobs/{printed}/events"):
            if api is node_api:
                continue
            streamed = await _read_stream(api, path)
            assert VALUE.encode() not in streamed and SHARED_VALUE.encode() not in streamed
            if api is vault.admin:
                assert printed.encode() in streamed
    assert seen > 40
    # The other node's own assignments: nothing of another node's attempts.
    assert VALUE not in json.dumps(await node.poll())
    _, page = await vault.admin.get("/api/v1/audit")
    assert {"secret.create", "secret.update"} & {e["action"] for e in page["entries"]}
    # Nor the daemons' own logs, nor the store (sealed at rest).
    for path in (vault.sched.log_path, vault.agent_log):
        assert VALUE.encode() not in path.read_bytes()
    for stored in await _stored(vault.sched):
        assert VALUE.encode() not in stored and SHARED_VALUE.encode() not in stored


async def _stored(sched: SchedulerProcess) -> list[bytes]:
    """What the store holds on disk: the SQLite files, or PostgreSQL's tables' rows."""
    if SchedulerProcess.databases is None:
        files = [p for p in sched.state_dir.iterdir() if p.name.startswith("berth.db")]
        assert files
        return [p.read_bytes() for p in files]
    import asyncpg

    conn = await asyncpg.connect(SchedulerProcess.databases(sched.state_dir))
    try:
        out = []
        for table in ("jobs", "events", "audit", "logs", "secrets", "kv"):
            rows = await conn.fetch(f"SELECT * FROM {table}")
            out.append(repr([tuple(r.values()) for r in rows]).encode())
        sealed = await conn.fetch("SELECT sealed FROM secrets")
        assert sealed and all(r[0] for r in sealed)
        return out
    finally:
        await conn.close()


# --- deleting a secret in use ------------------------------------------------------------------


async def test_deleting_a_secret_fails_the_queued_jobs_that_still_need_it(vault: Vault) -> None:
    assert (await _set(vault.alice, "doomed", VALUE))[0] == 201
    env = {"T": {"secret": "doomed"}}
    running = await _submit(vault.alice, _job('sleep 2; echo "late=$T"', env))
    # Fails once while the secret exists; its retry needs the secret again.
    retried = await _submit(
        vault.alice, _job("sleep 2; exit 3", env, max_retries=1, retry_delay_s=0)
    )
    waiting = await _submit(
        vault.alice, _job("true", env, constraints={"labels": {"host": "nowhere"}})
    )
    await _until(vault.alice, running, "running")
    await _until(vault.alice, retried, "running")

    status, gone = await vault.alice.call("DELETE", "/api/v1/secrets/doomed")
    assert status == 200, gone
    assert gone["secret"]["name"] == "doomed" and gone["failed_jobs"] == [waiting]
    assert VALUE not in json.dumps(gone)
    status, job = await vault.alice.get(f"/api/v1/jobs/{waiting}")
    assert job["state"] == "failed" and job["error_code"] == "secret_missing"
    assert "doomed" in job["reason"] and "deleted" in job["reason"]

    # The running job had its value: it goes on, and its log masks it still.
    done = await _until(vault.alice, running, "completed", "failed")
    assert done["state"] == "completed", done
    assert await _log(vault.alice, running) == b"late=[masked]\n"
    # The retry was queued after the delete: at its assignment the secret is missing.
    ended = await _until(vault.alice, retried, "failed", "completed")
    assert ended["error_code"] == "secret_missing" and ended["attempt"] == 2, ended
    assert "doomed" in ended["reason"]
    assert (await vault.alice.get("/api/v1/secrets/doomed"))[0] == 404


# --- the command line --------------------------------------------------------------------------


def _berth(sched: SchedulerProcess, token: str, *args: str, stdin: str = "") -> Any:
    env = {"PATH": "/usr/bin:/bin", "BERTH_ADDR": sched.url, "BERTH_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_cli_sets_lists_and_deletes_secrets(vault: Vault, tmp_path: Path) -> None:
    token = vault.alice.token
    assert token is not None
    done = await asyncio.to_thread(
        _berth, vault.sched, token, "secret", "set", "cli-token", stdin=VALUE + "\n"
    )
    assert done.returncode == 0, done.stderr
    assert VALUE not in done.stdout + done.stderr
    listed = await asyncio.to_thread(_berth, vault.sched, token, "secret", "list")
    assert listed.returncode == 0 and "cli-token" in listed.stdout and "alice" in listed.stdout
    assert VALUE not in listed.stdout
    # Stored without the line break echo added: the job's value is the value itself.
    from_file = tmp_path / "value"
    from_file.write_text(VALUE)
    done = await asyncio.to_thread(
        _berth, vault.sched, token, "secret", "set", "cli-file", "--from-file", str(from_file)
    )
    assert done.returncode == 0, done.stderr
    # berth submit --secret-env: the env names the secrets, the job gets their values.
    check = f'test "$A" = "$B" && test "${{#A}}" = {len(VALUE)} && echo same'
    done = await asyncio.to_thread(
        _berth,
        vault.sched,
        token,
        *("submit", "--secret-env", "A=cli-token", "--secret-env", "B=cli-file"),
        *("busybox", "--", "sh", "-c", check),
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert (await _until(vault.alice, job_id, "completed", "failed"))["state"] == "completed"
    assert await _log(vault.alice, job_id) == b"same\n"
    done = await asyncio.to_thread(_berth, vault.sched, token, "secret", "delete", "cli-token")
    assert done.returncode == 0 and "deleted cli-token" in done.stdout, done.stderr
    with contextlib.suppress(Exception):
        await vault.alice.call("DELETE", "/api/v1/secrets/cli-file")

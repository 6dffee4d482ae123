"""Blobs are read by those who may read them, attacked over real HTTP on a real
scheduler process: another submit token asks for a blob by digest and names it as
its job's input; a node asks for the input of an attempt that runs elsewhere; an
upload's status tells whether the blob was stored already; one token fills the
blob store.

A refusal must look exactly like the answer about a blob that does not exist, so that
a digest cannot be probed either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import Api, SchedulerProcess, SimAgent, wait_until

KIB = 1024


async def _token(admin: Api, role: str, name: str, **extra: Any) -> Api:
    status, made = await admin.post("/api/v1/tokens", {"role": role, "name": name, **extra})
    assert status == 201, made
    return Api(admin.session, admin.url, made["token"])


async def _upload(api: Api, data: bytes) -> str:
    status, body = await api.post("/api/v1/blobs", data=data)
    assert status == 201, (status, body)
    digest: str = body["digest"]
    return digest


def _never_stored() -> str:
    return hashlib.sha256(os.urandom(32)).hexdigest()


async def _job_count(admin: Api) -> int:
    status, stats = await admin.get("/api/v1/stats")
    assert status == 200, stats
    return sum(stats["jobs"].values())


async def _assigned(agent: SimAgent, job_id: str) -> bool:
    await agent.poll()
    return job_id in agent.running


async def _run_on(agent: SimAgent, owner: Api, spec: dict[str, Any]) -> str:
    status, job = await owner.post("/api/v1/jobs", spec)
    assert status == 201, job
    await wait_until(lambda: _assigned(agent, job["id"]), timeout=20)
    assert (await agent.report(job["id"], "running"))[0] == 200
    job_id: str = job["id"]
    return job_id


async def test_another_token_can_neither_fetch_nor_name_a_blob_it_does_not_hold(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    alice = await _token(admin, "submit", "alice")
    bob = await _token(admin, "submit", "bob")
    reader = await _token(admin, "read", "auditor")
    agent = SimAgent(http, sched.url, sched.join_token, "one")
    await agent.register()

    inputs = await _upload(alice, b"alice's input archive " + os.urandom(16))
    job_id = await _run_on(agent, alice, {"image": "busybox", "inputs": inputs})
    outputs = await _upload(agent.api, b"alice's outputs " + os.urandom(16))
    status, body = await agent.report(job_id, "completed", exit_code=0, outputs=outputs)
    assert status == 200, body

    missing = _never_stored()
    absent = await bob.get(f"/api/v1/blobs/{missing}")
    assert absent[0] == 403, absent
    jobs_before = await _job_count(admin)
    refused_missing = await bob.post("/api/v1/jobs", {"image": "busybox", "inputs": missing})
    assert refused_missing[0] == 400, refused_missing
    for digest in (inputs, outputs):
        # Fetching alice's blob answers what fetching one never stored answers.
        assert await bob.get(f"/api/v1/blobs/{digest}") == absent, digest
        # So does naming it as the input of bob's own job, and nothing is queued.
        status, body = await bob.post("/api/v1/jobs", {"image": "busybox", "inputs": digest})
        assert status == refused_missing[0], (status, body)
        assert body["error"]["details"] == refused_missing[1]["error"]["details"]
        assert body["error"]["message"] == refused_missing[1]["error"]["message"].replace(
            missing, digest
        )
    assert await _job_count(admin) == jobs_before
    assert (await bob.get(f"/api/v1/jobs/{job_id}/outputs"))[0] == 403

    # Those who may: the uploader, the owner of the job whose outputs it is, and the
    # read role; alice may chain her outputs into her next job.
    assert (await alice.get(f"/api/v1/blobs/{inputs}"))[0] == 200
    assert (await alice.get(f"/api/v1/blobs/{outputs}"))[0] == 200
    assert (await reader.get(f"/api/v1/blobs/{outputs}"))[0] == 200
    assert (await admin.get(f"/api/v1/blobs/{missing}"))[0] == 404
    status, body = await alice.post("/api/v1/jobs", {"image": "busybox", "inputs": outputs})
    assert status == 201, body
    # A token that sees every job sees every blob, as it sees every job's outputs.
    everyone = await _token(admin, "submit", "ops", all_jobs=True)
    assert (await everyone.get(f"/api/v1/blobs/{outputs}"))[0] == 200


async def test_a_node_fetches_only_the_blobs_of_attempts_it_runs(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    alice = await _token(admin, "submit", "alice")
    one = SimAgent(http, sched.url, sched.join_token, "one", labels={"pool": "one"})
    two = SimAgent(http, sched.url, sched.join_token, "two", labels={"pool": "two"})
    await one.register()
    await two.register()
    inputs = await _upload(alice, b"an input for node one " + os.urandom(16))
    spec = {"image": "busybox", "inputs": inputs, "constraints": {"labels": {"pool": "one"}}}
    job_id = await _run_on(one, alice, spec)
    absent = await two.api.get(f"/api/v1/blobs/{_never_stored()}")
    assert absent[0] == 403, absent

    assert (await one.api.get(f"/api/v1/blobs/{inputs}"))[0] == 200
    assert await two.api.get(f"/api/v1/blobs/{inputs}") == absent
    # Once the attempt has ended, node one has no business with its input either.
    status, body = await one.report(job_id, "completed", exit_code=0)
    assert status == 200, body
    assert await one.api.get(f"/api/v1/blobs/{inputs}") == absent


async def test_an_upload_answers_the_same_whether_the_blob_was_stored_or_not(
    admin: Api,
) -> None:
    alice = await _token(admin, "submit", "alice")
    bob = await _token(admin, "submit", "bob")
    data = b"a blob bob wants to know about " + os.urandom(16)
    answers = [
        await alice.post("/api/v1/blobs", data=data),
        await bob.post("/api/v1/blobs", data=data),
        await bob.post("/api/v1/blobs", data=data),
    ]
    assert [status for status, _ in answers] == [201, 201, 201], answers
    assert answers[0][1] == answers[1][1] == answers[2][1]


#: the per-token quota of the quota test
QUOTA = 1024 * KIB


@pytest.fixture
def small_quota(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(tmp_path / "state", "--max-blob-bytes-per-token", str(QUOTA)).start()
    yield proc
    proc.kill()


async def test_a_token_stores_blobs_up_to_its_quota(
    small_quota: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, small_quota.url, small_quota.admin_token)
    alice = await _token(admin, "submit", "alice")
    bob = await _token(admin, "submit", "bob")
    first = os.urandom(400 * KIB)
    second = os.urandom(700 * KIB)
    await _upload(alice, first)
    status, body = await alice.post("/api/v1/blobs", data=second)
    assert status == 413, (status, body)
    assert "--max-blob-bytes-per-token" in body["error"]["message"], body
    assert body["error"]["details"]["quota_bytes"] == QUOTA, body
    assert body["error"]["details"]["stored_bytes"] == len(first), body
    digest = hashlib.sha256(second).hexdigest()
    assert (await admin.get(f"/api/v1/blobs/{digest}"))[0] == 404
    # Storing what it stored already costs nothing more: 400 KiB stay charged, so
    # 600 KiB still fit.
    await _upload(alice, first)
    await _upload(alice, os.urandom(600 * KIB))
    status, body = await alice.post("/api/v1/blobs", data=os.urandom(32 * KIB))
    assert status == 413 and body["error"]["details"]["stored_bytes"] == 1000 * KIB, body
    # Other tokens have their own quota, and admin tokens none.
    await _upload(bob, second)
    await _upload(admin, os.urandom(2 * QUOTA))


async def test_holds_and_quotas_survive_a_restart_and_go_with_a_swept_blob(
    small_quota: SchedulerProcess,
) -> None:
    sched = small_quota
    # A connection per request: the scheduler restarts under the session.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        admin = Api(http, sched.url, sched.admin_token)
        alice = await _token(admin, "submit", "alice")
        bob = await _token(admin, "submit", "bob")
        kept = await _upload(alice, os.urandom(600 * KIB))
        later = os.urandom(600 * KIB)

        sched.stop()
        sched.start()
        assert (await alice.get(f"/api/v1/blobs/{kept}"))[0] == 200
        assert (await bob.get(f"/api/v1/blobs/{kept}"))[0] == 403
        status, body = await alice.post("/api/v1/blobs", data=later)
        assert status == 413 and body["error"]["details"]["stored_bytes"] == 600 * KIB, body

        # Once the blob is swept (no job names it), nobody holds it and its bytes
        # leave alice's quota; also after another restart.
        sched.stop()
        sched.extra = (*sched.extra, "--blob-grace", "0.5", "--retention-interval", "0.2")
        sched.start()
        await wait_until(
            lambda: _status(admin, f"/api/v1/blobs/{kept}", 404), timeout=30, interval=0.1
        )
        sched.stop()
        sched.start()
        assert (await alice.get(f"/api/v1/blobs/{kept}"))[0] == 403
        await _upload(alice, later)


# It deletes the blob's file under the scheduler: blobs are files with SQLite only.
@pytest.mark.stores("sqlite")
async def test_holds_of_a_blob_deleted_before_its_sweep_committed_go_at_the_next_start(
    small_quota: SchedulerProcess,
) -> None:
    """A sweep deletes the file, then commits that nobody holds it; a scheduler stopped
    in between must not keep the holds (nor charge the quota) of a blob that is gone."""
    sched = small_quota
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        admin = Api(http, sched.url, sched.admin_token)
        alice = await _token(admin, "submit", "alice")
        kept = await _upload(alice, os.urandom(600 * KIB))
        sched.stop()
        # What the interrupted sweep left: the file gone, the holds committed.
        (sched.state_dir / "blobs" / kept[:2] / kept).unlink()
        sched.start()
        assert (await alice.get(f"/api/v1/blobs/{kept}"))[0] == 403
        # Her 600 KiB are no longer charged: another 600 KiB fit under the 1 MiB quota.
        await _upload(alice, os.urandom(600 * KIB))


async def _status(api: Api, path: str, expected: int) -> bool:
    status, _ = await api.get(path)
    return status == expected


async def test_a_node_cannot_hand_another_blob_to_a_job_as_its_outputs(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    bob = await _token(admin, "submit", "bob")
    mallory = await _token(admin, "submit", "mallory")
    node = SimAgent(http, sched.url, sched.join_token, "hostile")
    await node.register()
    secret = await _upload(bob, b"bob's secret " + os.urandom(16))
    job_id = await _run_on(node, mallory, {"image": "busybox"})
    # The node names bob's blob as the outputs and the checkpoint of mallory's job.
    for field in ("outputs", "checkpoint"):
        status, body = await node.report(job_id, None, **{field: secret})
        assert status == 400 and body["error"]["details"]["field"] == f"$.{field}", body
    status, body = await node.report(job_id, "completed", exit_code=0, outputs=secret)
    assert status == 400, body
    assert (await mallory.get(f"/api/v1/jobs/{job_id}/outputs"))[0] == 404
    assert (await mallory.get(f"/api/v1/blobs/{secret}"))[0] == 403
    # What the node uploaded itself it may name.
    own = await _upload(node.api, b"the job's real outputs")
    status, body = await node.report(job_id, "completed", exit_code=0, outputs=own)
    assert status == 200, body
    assert (await mallory.get(f"/api/v1/jobs/{job_id}/outputs")) == (200, b"the job's real outputs")

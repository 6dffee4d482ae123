"""The job and node commands of `berth`, run as real processes against a real scheduler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support import REPO, Api, SchedulerProcess, SimAgent, free_port, wait_until


def berth(
    sched: SchedulerProcess | None, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "120"}
    if sched is not None:
        env["BERTH_ADDR"] = sched.url
        env["BERTH_TOKEN"] = token or sched.admin_token
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_submit_list_show_and_cancel_jobs(
    sched: SchedulerProcess, tmp_path: Path, admin: Api
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"image": "busybox", "name": "nightly", "labels": {"team": "a"}}))
    done = berth(sched, "submit", "-f", str(spec))
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()

    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"image": "busybox", "name": f"b{i}"} for i in range(3)]))
    done = berth(sched, "submit", "-f", str(many), "--json")
    assert done.returncode == 0 and len(json.loads(done.stdout)) == 3

    listing = berth(sched, "jobs", "--json")
    assert [j["id"] for j in json.loads(listing.stdout)][-1] == job_id
    table = berth(sched, "jobs").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "STATE"] and len(table) == 5
    assert all(len(line) <= 120 for line in table)

    detail = berth(sched, "job", job_id)
    assert detail.returncode == 0 and "nightly" in detail.stdout and "queued" in detail.stdout

    # With no node, the first pass says why it waits, and `berth job` shows it.
    async def told() -> bool:
        return bool((await admin.get(f"/api/v1/jobs/{job_id}"))[1]["reason"])

    await wait_until(told, timeout=10)
    waiting = berth(sched, "job", job_id).stdout
    assert "waiting: no node is taking jobs" in waiting, waiting

    cancelled = berth(sched, "cancel", "--state", "queued", "--label", "team=a")
    assert cancelled.returncode == 0 and cancelled.stdout.split() == [job_id, "cancelled"]
    again = berth(sched, "cancel", job_id)
    assert again.returncode == 1 and "refused: job" in again.stderr
    _, job = await admin.get(f"/api/v1/jobs/{job_id}")
    assert job["state"] == "cancelled"
    retried = berth(sched, "retry", job_id)
    assert retried.returncode == 0 and "queued" in retried.stdout


async def test_nodes_reads_like_sinfo_and_drain_takes_a_name(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = SimAgent(http, sched.url, sched.join_token, "worker-1", cpu=8, memory_mb=4096)
    await a.register()
    await admin.post("/api/v1/jobs", {"image": "busybox", "resources": {"cpu": 2}})
    await a.poll(wait=5)
    out = berth(sched, "nodes").stdout.splitlines()
    assert out[0].split() == ["NAME", "STATE", "CPU", "MEMORY", "JOBS", "HEARTBEAT", "REASON"]
    assert out[1].split()[:5] == ["worker-1", "busy", "2/8", "256/4096", "MiB"]
    drained = berth(sched, "drain", "worker-1", "--reason", "disk swap")
    assert drained.returncode == 0 and "draining" in drained.stdout
    assert "draining: disk swap" in berth(sched, "nodes").stdout
    assert json.loads(berth(sched, "nodes", "--json").stdout)[0]["draining"] is True


def test_exit_codes_tell_usage_unreachable_and_auth_apart(
    sched: SchedulerProcess, tmp_path: Path
) -> None:
    assert berth(sched, "cancel").returncode == 2
    assert berth(sched, "jobs", token="wrong").returncode == 77
    nobody = SchedulerProcess(tmp_path / "none", port=free_port())
    gone = berth(nobody, "jobs", token="x")
    assert gone.returncode == 69 and "cannot reach" in gone.stderr
    missing = berth(sched, "job", "nope")
    assert missing.returncode == 66
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image": "busybox", "resources": {"cpu": -1}}))
    refused = berth(sched, "submit", "-f", str(bad))
    assert refused.returncode == 2 and "$.resources.cpu" in refused.stderr


def test_token_commands_and_the_audit_log(sched: SchedulerProcess) -> None:
    made = berth(sched, "token", "create", "--role", "submit", "--name", "ci-bot")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert len(secret) >= 32 and "created submit token" in made.stderr

    # The new token submits; the token it was made with sees it in the audit log.
    spec = Path(sched.state_dir.parent / "spec.json")
    spec.write_text(json.dumps({"name": "from-bot", "image": "busybox", "command": ["true"]}))
    submitted = berth(sched, "submit", "-f", str(spec), "--json", token=secret)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)[0]["id"]
    refused = berth(sched, "token", "list", token=secret)
    assert refused.returncode != 0 and "may not" in refused.stderr

    listing = berth(sched, "token", "list", "--json")
    names = {t["name"]: t for t in json.loads(listing.stdout)}
    assert names["ci-bot"]["role"] == "submit" and "token" not in names["ci-bot"]
    table = berth(sched, "token", "list")
    assert "ci-bot" in table.stdout and secret not in table.stdout

    rotated = berth(sched, "token", "rotate-join")
    assert rotated.returncode == 0 and rotated.stdout.strip() == sched.join_token

    revoked = berth(sched, "token", "revoke", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    after = berth(sched, "jobs", token=secret)
    assert after.returncode != 0 and "token" in after.stderr

    audit = berth(sched, "audit", "--json")
    entries = json.loads(audit.stdout)
    assert [e["action"] for e in entries] == [
        "token.create",
        "job.submit",
        "token.rotate_join",
        "token.revoke",
    ]
    assert entries[1]["actor"] == "ci-bot" and entries[1]["target"] == job_id
    only = berth(sched, "audit", "--actor", "ci-bot")
    assert job_id in only.stdout and "token.create" not in only.stdout

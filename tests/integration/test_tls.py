"""TLS: a real scheduler serving HTTPS with a certificate from a CA made in the test,
real `berth` client commands and a real `berth agent` (process executor) talking to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support import REPO, SchedulerProcess, free_port, wait_until


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    #: a CA that signed nothing the scheduler has
    other_ca: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    out = Certs(root / "ca.pem", root / "cert.pem", root / "key.pem", root / "other-ca.pem")
    ca.cert_pem.write_to_path(str(out.ca))
    server.private_key_pem.write_to_path(str(out.key))
    # The leaf first, then its chain: what a server sends.
    out.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    trustme.CA().cert_pem.write_to_path(str(out.other_ca))
    return out


@pytest.fixture(scope="module")
def tls_sched(
    tmp_path_factory: pytest.TempPathFactory, store_kind: str, certs: Certs
) -> Iterator[SchedulerProcess]:
    state = tmp_path_factory.mktemp("tls") / "state"
    proc = SchedulerProcess(
        state,
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
        "--heartbeat-interval",
        "0.5",
        scheme="https",
    ).start()
    yield proc
    proc.stop()


def berth(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def client_env(sched: SchedulerProcess, **extra: str) -> dict[str, str]:
    return {"BERTH_ADDR": sched.url, "BERTH_TOKEN": sched.admin_token, **extra}


def test_scheduler_says_it_listens_on_https(tls_sched: SchedulerProcess) -> None:
    log = tls_sched.log_path.read_text()
    assert f"listening on https://127.0.0.1:{tls_sched.port}" in log


def test_cli_with_the_ca_submits_and_lists_jobs(
    tls_sched: SchedulerProcess, certs: Certs, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"image": "busybox", "name": "over-tls", "labels": {"nope": "x"}}))
    env = client_env(tls_sched)
    submitted = berth("submit", "-f", str(spec), "--ca-file", str(certs.ca), env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    # The same CA from the environment, as a host would set it once.
    listed = berth("jobs", "--json", env={**env, "BERTH_CA_FILE": str(certs.ca)})
    assert listed.returncode == 0, listed.stderr
    assert job_id in [j["id"] for j in json.loads(listed.stdout)]

    # ... and from the [client] section of a configuration file.
    config = tmp_path / "berth.toml"
    config.write_text(f'[client]\nca-file = "{certs.ca}"\naddr = "{tls_sched.url}"\n')
    shown = berth("--config", str(config), "job", job_id, env={"BERTH_TOKEN": env["BERTH_TOKEN"]})
    assert shown.returncode == 0 and "over-tls" in shown.stdout, shown.stderr


@pytest.mark.parametrize("ca", ["none", "other"])
def test_cli_that_does_not_trust_the_certificate_says_so_in_one_line(
    tls_sched: SchedulerProcess, certs: Certs, ca: str
) -> None:
    args = ["jobs"] if ca == "none" else ["jobs", "--ca-file", str(certs.other_ca)]
    done = berth(*args, env=client_env(tls_sched))
    # 69 as for any scheduler that cannot be reached; one line, no traceback.
    assert done.returncode == 69
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"berth: certificate verify failed for {tls_sched.url}")
    assert "--ca-file" in lines[0]


def test_a_ca_file_that_is_not_a_ca_bundle_is_a_usage_error(
    tls_sched: SchedulerProcess, certs: Certs
) -> None:
    done = berth("jobs", "--ca-file", str(certs.key), env=client_env(tls_sched))
    assert done.returncode == 2
    assert "--ca-file" in done.stderr and "not a PEM CA bundle" in done.stderr
    assert "Traceback" not in done.stderr


def test_plain_http_to_the_tls_port_gets_no_api_answer(tls_sched: SchedulerProcess) -> None:
    request = (
        f"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {tls_sched.admin_token}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", tls_sched.port), timeout=10) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    # The TLS layer drops it (at most a TLS alert): nothing HTTP comes back.
    assert not reply.startswith(b"HTTP/")
    assert b"jobs" not in reply

    done = berth(
        "jobs", env=client_env(tls_sched, BERTH_ADDR=tls_sched.url.replace("https:", "http:"))
    )
    assert done.returncode == 69 and "cannot reach the scheduler" in done.stderr


def test_agent_with_the_ca_registers_and_runs_a_job_over_tls(
    tls_sched: SchedulerProcess, certs: Certs, tmp_path: Path
) -> None:
    join = tmp_path / "join.token"
    join.write_text(tls_sched.join_token)
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from cli.main import main; main()",
                "agent",
                "--scheduler",
                tls_sched.url,
                "--join-token-file",
                str(join),
                "--state-dir",
                str(tmp_path / "agent"),
                "--name",
                "tls-worker",
                "--executor",
                "process",
                "--ca-file",
                str(certs.ca),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        env = client_env(tls_sched, BERTH_CA_FILE=str(certs.ca))
        # `berth run` submits, follows the log stream over TLS and exits with the job's code.
        done = berth("run", "busybox", "--", "sh", "-c", "echo hello over tls", env=env)
        assert done.returncode == 0, done.stderr + log_path.read_text()
        assert "hello over tls" in done.stdout
        nodes = json.loads(berth("nodes", "--json", env=env).stdout)
        assert [n["name"] for n in nodes] == ["tls-worker"]
        jobs = json.loads(berth("jobs", "--json", "--state", "completed", env=env).stdout)
        assert any(j["node_id"] == nodes[0]["id"] for j in jobs)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    assert "registered as tls-worker" in log_path.read_text()


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_scheduler_with_only_one_half_of_the_pair_refuses_to_start(
    certs: Certs, tmp_path: Path, given: str
) -> None:
    path = certs.cert if given == "--tls-cert" else certs.key
    state = tmp_path / "state"
    args = ["scheduler", "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}"]
    done = berth(*args, given, str(path))
    assert done.returncode == 2
    missing = "--tls-key" if given == "--tls-cert" else "--tls-cert"
    assert f"Error: {given} needs {missing}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not state.exists()


def test_scheduler_with_a_key_that_does_not_match_refuses_to_start(
    certs: Certs, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    args = ["scheduler", "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}"]
    mismatched = berth(*args, "--tls-cert", str(certs.ca), "--tls-key", str(certs.key))
    assert mismatched.returncode == 1
    assert "not a PEM certificate and its matching private key" in mismatched.stderr
    missing = berth(*args, "--tls-cert", str(state / "no.pem"), "--tls-key", str(certs.key))
    assert missing.returncode == 1
    assert f"cannot read the TLS certificate {state / 'no.pem'}" in missing.stderr
    assert "Traceback" not in mismatched.stderr + missing.stderr
    assert not state.exists()


async def test_berth_dev_with_tls_gives_its_agent_the_certificate(
    certs: Certs, tmp_path: Path
) -> None:
    port = free_port()
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "dev",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
            "--executor",
            "process",
            "--max-parallel",
            "1",
        ],
        cwd=REPO,
        # From the environment, as the variables a service file would set.
        env={**os.environ, "BERTH_TLS_CERT": str(certs.cert), "BERTH_TLS_KEY": str(certs.key)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_until((state / "admin.token").exists, timeout=30)
        env = {
            "BERTH_ADDR": f"https://127.0.0.1:{port}",
            "BERTH_TOKEN": (state / "admin.token").read_text().strip(),
            "BERTH_CA_FILE": str(certs.ca),
        }

        def node_idle() -> bool:
            done = berth("nodes", "--json", env=env)
            return done.returncode == 0 and any(
                n["state"] == "idle" for n in json.loads(done.stdout)
            )

        await wait_until(node_idle, timeout=60, interval=0.3)
        done = berth("run", "busybox", "--", "echo", "dev over tls", env=env)
        assert done.returncode == 0 and "dev over tls" in done.stdout, done.stderr
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"https://127.0.0.1:{port}/" in out.decode()

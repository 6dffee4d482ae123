"""Private registries over real HTTP: a real registry with basic auth, a real agent with
the docker executor, a real dockerd.

The module starts Debian's ``docker-registry`` on a free loopback port (dockerd lets
registries on 127.0.0.0/8 speak plain HTTP) with an htpasswd file (bcrypt) and its
storage in a temporary directory, pushes the test image there, and removes the local
copy before each test. Jobs run on the session's ``docker`` agent: with the right
``image_pull_secret`` (in either form) the image is pulled and runs; without one, or
with a wrong password, the attempt fails as ``unauthorized`` naming the registry, the
job's fault and not the node's; ``pull_policy: never`` fails on a missing image and
``if-not-present`` does not pull an image the node has; ``berth run`` takes both as
flags. The password shows in no job, log, or file of the scheduler and the agents.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from common import codec
from common.client import BerthClient
from common.models import Job
from tests.e2e.conftest import Cluster, job_logs, node_named, spec, wait_done
from tests.support import REPO, free_port

pytestmark = pytest.mark.docker

USER = "berth-ci"
PASSWORD = "Reg-pa55-9d1e7c"
REPOSITORY = "berth/private"


@dataclass
class Registry:
    #: host:port, what image names start with
    host: str
    #: the pushed image, host/berth/private:1
    image: str

    def remove_local_copy(self) -> None:
        client = docker.from_env()
        try:
            client.images.remove(self.image)
        except docker.errors.ImageNotFound:
            pass
        finally:
            client.close()

    def present_locally(self) -> bool:
        client = docker.from_env()
        try:
            client.images.get(self.image)
            return True
        except docker.errors.ImageNotFound:
            return False
        finally:
            client.close()


def _registry_binary() -> str:
    found = shutil.which("docker-registry")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is not installed (tests/run.sh installs it); CI needs it")
        pytest.skip("docker-registry is not installed (Debian's docker-registry package)")
    return found


def _htpasswd_line(user: str, password: str) -> str:
    try:
        import bcrypt
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("bcrypt is not installed (pip install -e '.[test]'); CI needs it")
        pytest.skip("bcrypt is not installed")
    # The lowest cost bcrypt allows: the registry checks it on every request.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}\n"


def _wait_until_it_answers(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for credentials
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer: {log.read_text()[-2000:]}")


def _push(image: str, source: str) -> None:
    client = docker.from_env()
    try:
        repo, _, tag = image.rpartition(":")
        client.images.get(source).tag(repo, tag)
        auth = {"username": USER, "password": PASSWORD}
        for line in client.api.push(repo, tag, stream=True, decode=True, auth_config=auth):
            if line.get("error"):
                raise RuntimeError(f"push of {image} failed: {line['error']}")
    finally:
        client.close()


@pytest.fixture(scope="module")
def registry(docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    binary = _registry_binary()
    where = tmp_path_factory.mktemp("registry")
    (where / "htpasswd").write_text(_htpasswd_line(USER, PASSWORD))
    host = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(where / "data")}},
        "http": {"addr": host},
        "auth": {"htpasswd": {"realm": "berth-test", "path": str(where / "htpasswd")}},
    }
    # JSON is YAML: no YAML writer needed.
    (where / "config.yml").write_text(json.dumps(config))
    log_path = where / "registry.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(where / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
    reg = Registry(host, f"{host}/{REPOSITORY}:1")
    try:
        _wait_until_it_answers(f"http://{host}/v2/", proc, log_path)
        _push(reg.image, docker_image)
        yield reg
    finally:
        reg.remove_local_copy()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def missing(registry: Registry) -> Registry:
    """The registry, its image absent from this host."""
    registry.remove_local_copy()
    return registry


def _name(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def _short_form(host: str, password: str = PASSWORD) -> str:
    return json.dumps({"registry": host, "username": USER, "password": password})


def _docker_config(host: str) -> str:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return json.dumps({"auths": {"registry.example.com": {"auth": "eDp5"}, host: {"auth": auth}}})


async def _run(api: BerthClient, registry: Registry, **extra: Any) -> Job:
    job = await api.submit_job(spec("echo pulled-and-ran", "docker", image=registry.image, **extra))
    return await wait_done(api, job.id, timeout=60)


async def _node_is_not_blamed(api: BerthClient) -> None:
    node = await node_named(api, "docker")
    assert node.infra_failures == 0
    assert node.state in ("idle", "busy")


def _files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue  # removed meanwhile
    return found


async def test_a_private_image_runs_with_its_pull_secret_in_either_form(
    api: BerthClient, cluster: Cluster, missing: Registry
) -> None:
    short, config = _name("reg"), _name("regcfg")
    await api.set_secret(short, _short_form(missing.host))
    await api.set_secret(config, _docker_config(missing.host))
    done = await _run(api, missing, image_pull_secret=short)
    assert done.state == "completed", done.error
    assert b"pulled-and-ran\n" in await job_logs(api, cluster.sched, done)
    assert missing.present_locally()
    # Pulled again before it starts (always), with the entry of a Docker config JSON.
    again = await _run(api, missing, image_pull_secret=config, pull_policy="always")
    assert again.state == "completed", again.error
    assert again.spec.image_pull_secret == config and again.spec.pull_policy == "always"
    # The password is in no job, and in no log or file of the scheduler and agents.
    for job in (done, again):
        assert PASSWORD.encode() not in codec.encode(await api.get_job(job.id))
    assert _files_holding(cluster.root, PASSWORD.encode()) == []


async def test_a_private_image_without_credentials_or_with_wrong_ones_is_unauthorized(
    api: BerthClient, cluster: Cluster, missing: Registry
) -> None:
    bare = await _run(api, missing)
    assert bare.state == "failed"
    assert bare.error is not None and bare.error.startswith("unauthorized: "), bare.error
    assert f"registry {missing.host}" in bare.error and "no image_pull_secret" in bare.error
    wrong_password = "Wrong-pa55-0b3f"
    wrong = _name("badreg")
    await api.set_secret(wrong, _short_form(missing.host, wrong_password))
    refused = await _run(api, missing, image_pull_secret=wrong)
    assert refused.state == "failed"
    assert refused.error is not None and refused.error.startswith("unauthorized: ")
    assert f"registry {missing.host}" in refused.error and repr(wrong) in refused.error
    assert wrong_password not in refused.error
    assert not missing.present_locally()
    # A credential the registry refuses is the job's to fix: the node is not blamed.
    await _node_is_not_blamed(api)
    assert _files_holding(cluster.root, wrong_password.encode()) == []


async def test_pull_policy_never_fails_on_a_missing_image_and_if_not_present_pulls_nothing(
    api: BerthClient, missing: Registry
) -> None:
    name = _name("reg")
    await api.set_secret(name, _short_form(missing.host))
    never = await _run(api, missing, image_pull_secret=name, pull_policy="never")
    assert never.state == "failed"
    assert never.error == (
        f"image {missing.image} is not present on this node (the pull policy is never)"
    )
    await _node_is_not_blamed(api)
    assert (await _run(api, missing, image_pull_secret=name)).state == "completed"
    # The node has it now: without credentials it still runs, as nothing is pulled.
    assert (await _run(api, missing, pull_policy="if-not-present")).state == "completed"


def _berth(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BERTH_ADDR": cluster.sched.url, "BERTH_TOKEN": cluster.sched.admin_token}
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_berth_run_pulls_with_the_flags_and_berth_job_shows_them(
    api: BerthClient, cluster: Cluster, missing: Registry
) -> None:
    name = _name("reg")
    await api.set_secret(name, _short_form(missing.host))
    flags = ["--image-pull-secret", name, "--pull-policy", "always"]
    placed = ["--constraint", "pool=docker", "--cpu", "0.5", "--memory-mb", "64"]
    run = await asyncio.to_thread(
        _berth, cluster, "run", *flags, *placed, missing.image, "--", "echo", "via-cli"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "via-cli\n"
    found = re.search(r"job (\S+) submitted", run.stderr)
    assert found is not None, run.stderr
    shown = await asyncio.to_thread(_berth, cluster, "job", found.group(1))
    assert f"pull      always, with secret {name}" in shown.stdout, shown.stdout

"""A job's files on real agents: inputs in, outputs out, hostile archives refused, the
blob routes, and `berth run` as a real subprocess."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.archives import MAX_EXPANDED_BYTES, create_tar_gz, extract
from common.client import BerthClient
from common.errors import BerthError, Forbidden, NotFound, StaleAttempt
from tests.e2e.conftest import Cluster, job_logs, node_named, spec, wait_done
from tests.support import REPO

pytestmark = pytest.mark.docker

BOTH = pytest.mark.parametrize("pool", ["docker", "process"])


async def _upload_tree(api: BerthClient, tmp_path: Path, files: dict[str, str]) -> str:
    src = tmp_path / "src"
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    create_tar_gz(src, tmp_path / "inputs.tar.gz")
    return await api.upload_blob(tmp_path / "inputs.tar.gz")


async def _upload_bytes(api: BerthClient, tmp_path: Path, data: bytes) -> str:
    path = tmp_path / f"blob-{uuid.uuid4().hex[:8]}"
    path.write_bytes(data)
    return await api.upload_blob(path)


# --- inputs and outputs ----------------------------------------------------------------


@BOTH
async def test_inputs_reach_the_job_and_outputs_come_back(
    api: BerthClient, cluster: Cluster, pool: str, tmp_path: Path
) -> None:
    digest = await _upload_tree(
        api, tmp_path, {"words.txt": "alpha beta\n", "deep/er/n.txt": "42\n"}
    )
    script = (
        'cd "$BERTH_WORKSPACE"; cat in/words.txt in/deep/er/n.txt; '
        "mkdir -p out/report; tr a-z A-Z < in/words.txt > out/report/upper.txt; "
        "echo done > out/flag"
    )
    job = await api.submit_job(spec(script, pool, inputs=digest))
    done = await wait_done(api, job.id)
    assert (done.state, done.error) == ("completed", None)
    assert await job_logs(api, cluster.sched, done) == b"alpha beta\n42\n"
    assert done.outputs is not None
    archive = tmp_path / "outputs.tar.gz"
    assert await api.download_outputs(job.id, archive) == done.outputs
    extract(archive, tmp_path / "back")
    assert (tmp_path / "back" / "report" / "upper.txt").read_text() == "ALPHA BETA\n"
    assert (tmp_path / "back" / "flag").read_text() == "done\n"


async def test_workspace_is_mounted_at_workspace_in_the_container(api: BerthClient) -> None:
    job = await api.submit_job(
        spec(
            'test "$BERTH_WORKSPACE" = /workspace && test -d /workspace/in '
            "&& test -d /checkpoint && echo ok > /workspace/out/ok",
            "docker",
        )
    )
    done = await wait_done(api, job.id)
    assert (done.state, done.exit_code) == ("completed", 0)
    assert done.outputs is not None


async def test_a_job_that_leaves_no_outputs_has_none(api: BerthClient, tmp_path: Path) -> None:
    job = await api.submit_job(spec("echo nothing to keep", "docker"))
    done = await wait_done(api, job.id)
    assert done.state == "completed"
    assert done.outputs is None
    with pytest.raises(NotFound) as err:
        await api.download_outputs(job.id, tmp_path / "none.tar.gz")
    assert "has no outputs" in err.value.message


# --- hostile input archives ------------------------------------------------------------


def _member(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _targz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _tar_bomb(expanded: int) -> bytes:
    """A real tar.gz of one file of zeros that expands to ``expanded`` bytes, made in
    no time: gzip members may be concatenated, so one compressed MiB is repeated."""
    mib = 1024 * 1024
    assert expanded % mib == 0
    info = tarfile.TarInfo("zeros")
    info.size = expanded
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    one_mib = gzip.compress(b"\0" * mib, compresslevel=9)
    end = gzip.compress(b"\0" * 1024)
    return gzip.compress(header) + one_mib * (expanded // mib) + end


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory on the host that no job may write to, with one file in it."""
    d = Path("/tmp") / f"berth-outside-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    (d / "keep").write_text("original\n")
    yield d
    shutil.rmtree(d)


def _hostile(case: str, outside: Path) -> tuple[bytes, str]:
    """(archive, what the error must say) for each kind of hostile archive."""
    up = "../" * 20
    if case == "traversal":
        return _targz(_member(f"{up}{outside.relative_to('/')}/escaped")), "points outside"
    if case == "absolute path":
        return _targz(_member(f"{outside}/escaped")), "absolute path"
    if case == "symlink out":
        return _targz(_link("out", str(outside)), _member("out/escaped")), "points outside"
    if case == "relative symlink out":
        target = f"{up}{outside.relative_to('/')}"
        return _targz(_link("out", target), _member("out/escaped")), "points outside"
    if case == "hardlink out":
        keep = outside / "keep"
        return _targz(_link("hl", str(keep), hard=True), _member("hl")), "absolute path"
    if case == "relative hardlink out":
        target = f"{up}{outside.relative_to('/')}/keep"
        return _targz(_link("hl", target, hard=True), _member("hl")), "points outside"
    if case == "tar bomb":
        return _tar_bomb(MAX_EXPANDED_BYTES + 1024 * 1024), "expands to more than"
    raise AssertionError(case)


def _untouched(outside: Path) -> bool:
    names = sorted(p.name for p in outside.iterdir())
    return names == ["keep"] and (outside / "keep").read_text() == "original\n"


@pytest.mark.parametrize(
    "case",
    [
        "traversal",
        "absolute path",
        "symlink out",
        "relative symlink out",
        "hardlink out",
        "relative hardlink out",
        "tar bomb",
    ],
)
async def test_hostile_input_archive_fails_the_job_and_writes_nothing_outside(
    api: BerthClient, cluster: Cluster, case: str, outside: Path, tmp_path: Path
) -> None:
    data, reason = _hostile(case, outside)
    digest = await _upload_bytes(api, tmp_path, data)
    job = await api.submit_job(spec("echo the job ran", "docker", inputs=digest))
    done = await wait_done(api, job.id)
    assert done.state == "failed"
    assert done.error is not None
    assert done.error.startswith(f"input archive {digest[:12]} refused: "), done.error
    assert reason in done.error
    # The job never ran, and it is the job's fault, not the node's.
    assert await job_logs(api, cluster.sched, done) == b""
    assert (await node_named(api, "docker")).infra_failures == 0
    assert _untouched(outside)
    # The workspace of the refused attempt is gone from the agent.
    spaces = cluster.root / "docker" / "workspaces"
    assert not (spaces / f"{job.id}-1").exists()


async def test_an_input_that_is_not_stored_fails_the_job(api: BerthClient) -> None:
    job = await api.submit_job(spec("true", "docker", inputs="ab" * 32))
    done = await wait_done(api, job.id)
    assert done.state == "failed"
    assert done.error == f"the input archive {'ab' * 32} is not stored on the scheduler"


# --- the blob routes -------------------------------------------------------------------


async def test_blobs_are_content_addressed_and_stored_once(
    api: BerthClient, cluster: Cluster, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    first = await api.request(
        "POST", "/api/v1/blobs", body=data, content_type="application/octet-stream"
    )
    again = await api.request(
        "POST", "/api/v1/blobs", body=data, content_type="application/octet-stream"
    )
    assert first == again
    digest = hashlib.sha256(data).hexdigest()
    assert first.startswith(b'{"digest":"' + digest.encode())
    stored = cluster.sched.state_dir / "blobs" / digest[:2] / digest
    assert stored.read_bytes() == data
    await api.download_blob(digest, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    with pytest.raises(NotFound):
        await api.download_blob("0" * 64, tmp_path / "missing")
    with pytest.raises(BerthError) as err:
        await api.request("GET", "/api/v1/blobs/not-a-digest")
    assert err.value.code == "invalid"


async def test_a_blob_past_the_size_limit_is_refused_before_it_is_read(
    cluster: Cluster,
) -> None:
    host, port = "127.0.0.1", cluster.sched.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (
                "POST /api/v1/blobs HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                f"Authorization: Bearer {cluster.sched.admin_token}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {300 * 1024 * 1024}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    assert status.split()[1] == b"413", status


async def test_checkpoints_are_taken_only_from_the_node_that_ran_the_attempt(
    api: BerthClient, cluster: Cluster, tmp_path: Path
) -> None:
    job = await api.submit_job(spec("echo hi", "docker"))
    done = await wait_done(api, job.id)
    archive = tmp_path / "ck.tar.gz"
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state").write_text("x")
    create_tar_gz(tmp_path / "ck", archive)
    docker_node = await node_named(api, "docker")
    small_node = await node_named(api, "small")
    tokens = {
        name: json.loads((cluster.root / name / "node.json").read_text())
        for name in ("docker", "small")
    }
    async with BerthClient(cluster.sched.url, tokens["small"]["node_token"]) as small:
        with pytest.raises(Forbidden):
            await small.upload_checkpoint(docker_node.id, job.id, 1, archive)
        with pytest.raises(StaleAttempt):
            await small.upload_checkpoint(small_node.id, job.id, 1, archive)
    async with BerthClient(cluster.sched.url, tokens["docker"]["node_token"]) as node:
        digest = await node.upload_checkpoint(docker_node.id, job.id, 1, archive)
    assert (await api.get_job(done.id)).checkpoint == digest


# --- berth run -------------------------------------------------------------------------


async def _berth(cluster: Cluster, *args: str, cwd: Path) -> tuple[int, bytes, bytes]:
    env = {
        **os.environ,
        "BERTH_ADDR": cluster.sched.url,
        "BERTH_TOKEN": cluster.sched.admin_token,
        "PYTHONPATH": str(REPO),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from cli.main import main; main()",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_berth_run_sends_inputs_follows_output_and_fetches_outputs(
    cluster: Cluster, api: BerthClient, tmp_path: Path
) -> None:
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "words.txt").write_text("one two three\n")
    out_dir = tmp_path / "results"
    script = (
        "cat /workspace/in/sub/words.txt; echo $GREETING; "
        "wc -w < /workspace/in/sub/words.txt > /workspace/out/count; "
        "mkdir /workspace/out/nested; echo deep > /workspace/out/nested/file; exit 3"
    )
    code, out, err = await _berth(
        cluster,
        "run",
        "--input",
        str(src),
        "--output",
        str(out_dir),
        "--cpu",
        "0.5",
        "--memory-mb",
        "64",
        "--timeout",
        "120",
        "--env",
        "GREETING=hello there",
        "--constraint",
        "pool=docker",
        cluster.image,
        "--",
        "sh",
        "-c",
        script,
        cwd=tmp_path,
    )
    assert code == 3, err.decode()
    assert out == b"one two three\nhello there\n"
    assert (out_dir / "count").read_text().strip() == "3"
    assert (out_dir / "nested" / "file").read_text() == "deep\n"
    assert b"failed: exit code 3" in err


async def test_berth_run_exits_zero_for_a_completed_job_and_124_for_a_timeout(
    cluster: Cluster, tmp_path: Path
) -> None:
    common = ("run", "--constraint", "pool=docker", "--memory-mb", "64")
    code, out, err = await _berth(cluster, *common, cluster.image, "--", "echo", "hi", cwd=tmp_path)
    assert (code, out) == (0, b"hi\n"), err.decode()
    code, out, err = await _berth(
        cluster,
        *common,
        "--timeout",
        "1",
        cluster.image,
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
        cwd=tmp_path,
    )
    assert (code, out) == (124, b"started\n"), err.decode()

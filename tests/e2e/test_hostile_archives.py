"""Hostile input archives handed to a real agent (`berth agent --executor process`) as
a job's inputs: traversal, absolute names, links and hard links that lead out, device
files, decompression bombs of many GiB and a tar of a million entries.

Each job fails with an error that names its input archive and says why; the job
never runs; nothing is written outside the attempt's workspace (neither a directory
elsewhere on the host nor the agent's own state); it is the job's fault, not the
node's; and the agent keeps serving: the next job, with a good archive, completes.

The agent runs with its address space capped (3 GiB), so a bomb that got through would
fail the test instead of taking the machine's memory.
"""

from __future__ import annotations

import hashlib
import io
import resource
import shutil
import tarfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.archives import MAX_MEMBERS, create_tar_gz
from common.client import BerthClient
from tests import hostile_archives as H
from tests.e2e.conftest import (
    AgentProcess,
    job_logs,
    node_named,
    poll,
    spec,
    wait_done,
    wait_for_nodes,
)
from tests.support import SchedulerProcess

#: the agent's address space: far above what it needs, below any bomb here
AGENT_MEMORY = 3 * H.GIB
POOL = "hostile"


@dataclass
class Rig:
    root: Path
    sched: SchedulerProcess
    agent: AgentProcess
    #: a directory on the host that no job may write to, with one file in it
    outside: Path

    @property
    def workspaces(self) -> Path:
        return self.agent.state_dir / "workspaces"

    def agent_state(self) -> dict[str, str]:
        """The agent's own files (but its workspaces) and their sha256."""
        out = {}
        for path in sorted(self.agent.state_dir.rglob("*")):
            if path.is_file() and self.workspaces not in path.parents:
                out[str(path.relative_to(self.agent.state_dir))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
        return out

    def outside_untouched(self) -> bool:
        names = sorted(p.name for p in self.outside.iterdir())
        return names == ["keep"] and (self.outside / "keep").read_text() == "original\n"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("hostile-archives")
    outside = Path("/tmp") / f"berth-outside-{uuid.uuid4().hex[:10]}"
    outside.mkdir()
    (outside / "keep").write_text("original\n")
    sched = SchedulerProcess(
        root / "scheduler", "--heartbeat-interval", "0.5", "--node-ttl", "20"
    ).start()
    flags = ("--executor", "process", "--max-parallel", "2", "--label", f"pool={POOL}")
    agent = AgentProcess(sched, POOL, root / POOL, *flags).start()
    try:
        assert agent.proc is not None
        resource.prlimit(agent.proc.pid, resource.RLIMIT_AS, (AGENT_MEMORY, AGENT_MEMORY))
        yield Rig(root, sched, agent, outside)
    finally:
        agent.kill()
        sched.kill()
        shutil.rmtree(outside, ignore_errors=True)


@pytest.fixture(scope="module")
async def api(rig: Rig) -> AsyncIterator[BerthClient]:
    async with BerthClient(rig.sched.url, rig.sched.admin_token, timeout=60) as client:
        await wait_for_nodes(client, [POOL], timeout=60)
        yield client


def _member(name: str, data: bytes = b"pwned\n") -> bytes:
    return H.file_member(name, data)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> bytes:
    return H.header(name, kind=kind, link=target)


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def _hostile(case: str, rig: Rig) -> tuple[bytes, str]:
    """(archive, what the job's error must say) for each kind of hostile archive."""
    # The inputs are extracted to <agent state>/workspaces/<job>-<attempt>/workspace/in.
    up = "../" * 40
    away = str(rig.outside).lstrip("/")
    state = "../../../../"
    archives: dict[str, tuple[bytes, str]] = {
        "traversal": (H.tar(_member(f"{up}{away}/escaped")), "points outside"),
        "traversal into the agent's state": (
            H.tar(_member(f"{state}node.json", b"{}")),
            "points outside",
        ),
        "absolute path": (H.tar(_member(f"{rig.outside}/escaped")), "absolute path"),
        "symlink out": (
            H.tar(_link("out", str(rig.outside)), _member("out/escaped")),
            "points outside",
        ),
        "relative symlink out": (
            H.tar(_link("out", f"{up}{away}"), _member("out/escaped")),
            "points outside",
        ),
        "symlink to the agent's state": (H.tar(_link("st", state)), "points outside"),
        "hard link out": (
            H.tar(_link("hl", f"{rig.outside}/keep", tarfile.LNKTYPE), _member("hl")),
            "absolute path",
        ),
        "relative hard link out": (
            H.tar(_link("hl", f"{up}{away}/keep", tarfile.LNKTYPE), _member("hl")),
            "points outside",
        ),
        "character device": (H.tar(H.header("mem", kind=tarfile.CHRTYPE)), "device file"),
        "block device": (H.tar(H.header("sda", kind=tarfile.BLKTYPE)), "device file"),
        "fifo": (H.tar(H.header("pipe", kind=tarfile.FIFOTYPE)), "fifo"),
        "zip traversal": (_zip(f"{up}{away}/escaped", b"pwned\n"), "points outside"),
        "8 GiB of zeros, gzip": (H.zeros_bomb(8 * H.GIB), "expands to more than"),
        "8 GiB of zeros, bzip2": (H.zeros_bomb(8 * H.GIB, "bz2"), "expands to more than"),
        "a 4 GiB long name": (H.long_name_bomb(4 * H.GIB), "tar headers take more than"),
        "a 4 GiB pax record": (H.pax_bomb(4 * H.GIB), "tar headers take more than"),
        "8 GiB skipped": (H.skipped_member_bomb(8 * H.GIB), "tar headers take more than"),
        "a million entries": (
            H.many_entries(1_000_000),
            f"the archive has more than {MAX_MEMBERS} members",
        ),
    }
    return archives[case]


CASES = [
    "traversal",
    "traversal into the agent's state",
    "absolute path",
    "symlink out",
    "relative symlink out",
    "symlink to the agent's state",
    "hard link out",
    "relative hard link out",
    "character device",
    "block device",
    "fifo",
    "zip traversal",
    "8 GiB of zeros, gzip",
    "8 GiB of zeros, bzip2",
    "a 4 GiB long name",
    "a 4 GiB pax record",
    "8 GiB skipped",
    "a million entries",
]


async def _upload(api: BerthClient, rig: Rig, data: bytes) -> str:
    path = rig.root / f"upload-{uuid.uuid4().hex[:8]}"
    path.write_bytes(data)
    try:
        return await api.upload_blob(path)
    finally:
        path.unlink()


@pytest.mark.parametrize("case", CASES)
async def test_a_hostile_input_archive_fails_its_job_and_the_agent_goes_on(
    api: BerthClient, rig: Rig, case: str
) -> None:
    data, reason = _hostile(case, rig)
    assert len(data) < 16 * H.MIB
    digest = await _upload(api, rig, data)
    state_before = rig.agent_state()
    job = await api.submit_job(spec("echo the job ran", POOL, inputs=digest))
    done = await wait_done(api, job.id, timeout=120)
    assert done.state == "failed", done
    assert done.error is not None
    assert done.error.startswith(f"input archive {digest[:12]} refused: "), done.error
    assert reason in done.error, done.error
    # The job never ran, and it is the job's fault, not the node's.
    assert await job_logs(api, rig.sched, done) == b""
    node = await node_named(api, POOL)
    assert node.infra_failures == 0 and node.state in ("idle", "busy"), node
    # Nothing outside the workspace changed, and the workspace itself is gone. (The
    # agent keeps a final report on disk until the scheduler has it: wait for that.)
    pending = rig.agent.state_dir / "reports" / f"{job.id}.1.json"
    await poll(lambda: not pending.exists(), 30, what="the agent to drop its delivered report")
    assert rig.outside_untouched()
    assert rig.agent_state() == state_before
    assert not (rig.workspaces / f"{job.id}-1").exists()
    alive = rig.agent.proc is not None and rig.agent.proc.poll() is None
    assert alive, rig.agent.log_text()[-3000:]


async def test_after_every_hostile_archive_a_good_one_runs(api: BerthClient, rig: Rig) -> None:
    """Runs after the cases above (file order): the same agent process takes a good
    archive and runs the job to completion."""
    src = rig.root / "good"
    (src / "deep").mkdir(parents=True)
    (src / "deep" / "hello.txt").write_text("hello from the inputs\n")
    archive = rig.root / "good.tar.gz"
    create_tar_gz(src, archive)
    digest = await api.upload_blob(archive)
    job = await api.submit_job(
        spec('cat "$BERTH_WORKSPACE/in/deep/hello.txt"', POOL, inputs=digest)
    )
    done = await wait_done(api, job.id, timeout=120)
    assert done.state == "completed", done
    assert await job_logs(api, rig.sched, done) == b"hello from the inputs\n"
    assert rig.agent.proc is not None and rig.agent.proc.poll() is None
    assert rig.outside_untouched()

"""The mount allow-list under a race: a job that swaps what an allowed path names.

A ``race`` agent allows ``mount:DIR``. One job mounts DIR read-write and, for as long
as it runs, swaps ``DIR/sub`` between a real directory and a link to a directory
outside DIR that holds a root-only file; meanwhile other jobs mount ``DIR/sub``
read-only and print what they find there. On an agent that checks the path and then
hands dockerd the path again, some of them are shown the outside directory. The agent
must bind what it checked, so none may be. (Before it did, runs of this test showed the
outside to 1 to 7 of 60 readers with a directory swapped, 2 to 5 with an inside link.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from common.client import BerthClient
from common.models import Mount
from tests.e2e.conftest import (
    Cluster,
    job_logs,
    spec,
    wait_done,
    wait_for_nodes,
    wait_state,
)
from tests.support import wait_until

pytestmark = pytest.mark.docker

#: read-only jobs racing the swapper (the review saw 11 of 30 shown the outside)
READERS = 60
SECRET = "root-only secret from outside the allowed directory"
INSIDE = "inside"


@pytest.fixture(scope="module")
def race_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the ``race`` agent allows mounts from; each test works under it."""
    return tmp_path_factory.mktemp("race")


def _race_dirs(root: Path, name: str) -> tuple[Path, Path]:
    """``root/name`` holding ``sub`` (a real directory), ``real`` (a second one) and
    ``lnk`` (a link outside); the outside directory holds a root-only file."""
    allowed, outside = root / name, root.parent / f"{root.name}-{name}-outside"
    for d in (allowed / "sub", allowed / "real"):
        d.mkdir(parents=True)
        (d / "secret").write_text(INSIDE + "\n")
    outside.mkdir(mode=0o700)
    (outside / "secret").write_text(SECRET + "\n")
    os.chmod(outside / "secret", 0o600)
    (allowed / "lnk").symlink_to(outside)
    return allowed, outside


@pytest.fixture(scope="module")
def race_agent(cluster: Cluster, race_root: Path) -> str:
    if "race" not in cluster.agents:
        cluster.add_agent(
            "race",
            "--executor",
            "docker",
            "--max-parallel",
            "4",
            "--label",
            "pool=race",
            "--allow",
            f"mount:{race_root}",
        )
    return "race"


#: how the swapper changes what DIR/sub names, forever (a step that fails, as when
#: dockerd made a missing DIR/sub a directory, is undone by the next ``rm -rf``)
SWAPS = {
    # The review's: DIR/sub is a directory, then a link to the outside.
    "dir-and-link": (
        "while :; do [ -d away ] || {{ mkdir away; echo inside > away/secret; }}; "
        "rm -rf sub; mv away sub; mv sub away || rm -rf sub; ln -s {outside} sub; done"
    ),
    # A link that leads inside (so a check of the path passes), then outside.
    "link-in-and-out": (
        "rm -rf sub; while :; do ln -sfn real sub || rm -rf sub; "
        "ln -sfn {outside} sub || rm -rf sub; done"
    ),
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
async def test_a_job_swapping_links_cannot_show_other_mounts_a_directory_outside(
    api: BerthClient, cluster: Cluster, race_root: Path, race_agent: str, swap: str
) -> None:
    allowed, outside = _race_dirs(race_root, swap)
    await wait_for_nodes(api, [race_agent], timeout=60)
    script = "cd /data; " + SWAPS[swap].format(outside=outside)
    swapper = await api.submit_job(
        spec(
            script,
            "race",
            cpu=0.1,
            memory_mb=32,
            timeout_s=600,
            mounts=(Mount(str(allowed), "/data", read_only=False),),
        )
    )
    await wait_state(api, swapper.id, {"running"}, timeout=60)
    reader = spec(
        "cat /data/secret",
        "race",
        cpu=0.1,
        memory_mb=32,
        mounts=(Mount(str(allowed / "sub"), "/data"),),
    )
    try:
        ids = [(await api.submit_job(reader)).id for _ in range(READERS)]
        leaked, inside, refused = 0, 0, 0
        reasons: Counter[str] = Counter()
        for job_id in ids:
            done = await wait_done(api, job_id, timeout=300)
            output = (await job_logs(api, cluster.sched, done)).decode(errors="replace")
            if SECRET in output:
                leaked += 1
            elif done.state == "completed" and INSIDE in output:
                inside += 1
            else:
                refused += 1
                reasons[(done.error or output)[-90:]] += 1  # shown when the test fails
        print(
            f"readers: {leaked} leaked, {inside} read inside, {refused} refused or failed {reasons}"
        )
        # The swapper kept swapping all along: the race was live for every reader.
        assert (await api.get_job(swapper.id)).state == "running"
        assert leaked == 0, f"{leaked} of {READERS} readers were shown the outside directory"
    finally:
        await api.cancel_job(swapper.id)
        await wait_done(api, swapper.id, timeout=60)
    # The job has ended when the scheduler says so; its container may still be stopping.
    await wait_until(lambda: _container_gone(swapper.id), timeout=60, interval=0.2)
    # The rule refuses a path that changed under the check, not every mount under DIR
    # (how many readers caught DIR/sub as a directory during the race depends on the
    # load): once the swapping stops, a reader is shown the directory that is there.
    sub = allowed / "sub"
    if sub.is_symlink() or not sub.is_dir():
        sub.unlink(missing_ok=True)
        sub.mkdir()
    (sub / "secret").write_text(INSIDE + "\n")
    done = await wait_done(api, (await api.submit_job(reader)).id, timeout=120)
    output = (await job_logs(api, cluster.sched, done)).decode(errors="replace")
    assert done.state == "completed" and INSIDE in output, (done.error, output)


async def _container_gone(job_id: str) -> bool:
    """Whether no container of the job runs any more."""
    listed = await asyncio.to_thread(
        subprocess.run,
        ["docker", "ps", "-q", "--filter", f"label=berth.job={job_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return not listed.stdout.strip()

"""The link-swap race on a job's checkpoint and outputs, performed for real.

A job runs a static helper (tests/link_swapper.c, sent as its input archive) that swaps
files and a directory in the directory the agent archives with symbolic links to host
paths (a root-only secret file and directory made here, and the agent's own node.json
with its node token), atomically with renameat2(RENAME_EXCHANGE), in a loop. An agent
that checks an entry with lstat and then opens it by path reads the host file whenever
a swap lands in between, and uploads it for the submitter to download (what `docker
cp` did, CVE-2018-15664). Every archive the scheduler stored for the job is downloaded
here and searched for the secret and the token.

- Checkpoints, docker executor: the helpers swap in /checkpoint for 15 s with
  ``checkpoint_interval_s: 1``; the container is frozen while each is archived, so
  none is refused either.
- Outputs, process executor: the helpers leave the attempt's process group (setsid)
  and swap in the outputs directory while the agent archives it after the job's exit.
  (In a container nothing outlives the job's exit, so outputs cannot race there.)
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from common.client import BerthClient
from common.errors import NotFound
from tests.e2e.conftest import Cluster, poll, spec, wait_done
from tests.link_swap import HostSecrets, build_swapper, make_secrets, tar_gz_of

pytestmark = pytest.mark.docker

#: seconds the helpers swap in /checkpoint (one checkpoint a second)
CHECKPOINT_SWAP_S = 15
#: seconds the detached helpers swap in the outputs directory after the job exited
OUTPUT_SWAP_S = 3
#: jobs whose outputs are swapped, one archive each
OUTPUT_RUNS = 4
#: how many decoys for the secret file and for node.json, and how many directories
#: each job swaps: swapped directories leak the most (a reader that finds a name no
#: longer a link fails the whole archive, one that enters a link does not)
FILES, TREES = 2, 12


def _secrets(cluster: Cluster, agent: str, tmp_path: Path, tag: str) -> HostSecrets:
    node_file = cluster.agents[agent].state_dir / "node.json"
    token = json.loads(node_file.read_text())["node_token"]
    return make_secrets(tmp_path / "host-secrets", node_file, token, tag)


async def _upload_helper(api: BerthClient, tmp_path: Path) -> str:
    helper = build_swapper(tmp_path / "build")
    archive = tmp_path / "helper.tar.gz"
    archive.write_bytes(tar_gz_of({"link_swapper": helper}))
    return await api.upload_blob(archive)


def _stored_blobs(cluster: Cluster) -> set[str]:
    root = cluster.sched.state_dir / "blobs"
    return {p.name for p in root.glob("*/*") if re.fullmatch(r"[0-9a-f]{64}", p.name)}


async def test_checkpoints_never_hold_host_files_a_swapped_link_points_to(
    api: BerthClient, cluster: Cluster, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:12]
    secrets = _secrets(cluster, "docker", tmp_path, tag)
    inputs = await _upload_helper(api, tmp_path)
    before = _stored_blobs(cluster)
    # Two helpers, one a core, each with its own names: the more swaps, and the busier
    # the host, the likelier one lands inside a reader's check-then-open.
    helpers = " & ".join(
        f"/workspace/in/link_swapper /checkpoint {CHECKPOINT_SWAP_S} "
        + " ".join(secrets.specs(f"ck-{tag}-{h}-", files=FILES, trees=TREES // 2))
        for h in "ab"
    )
    job = await api.submit_job(
        spec(
            f"{helpers} & wait",
            "docker",
            inputs=inputs,
            checkpoint_interval_s=1,
            cpu=2.0,
        )
    )
    done = await wait_done(api, job.id, timeout=CHECKPOINT_SWAP_S + 60)
    assert (done.state, done.error) == ("completed", None)

    # Every checkpoint stored meanwhile (a superseded one stays until the blob sweep's
    # grace of an hour has passed): downloaded through the API and searched.
    checkpoints: dict[str, list[str]] = {}
    for digest in sorted(_stored_blobs(cluster) - before):
        path = tmp_path / f"{digest}.tar.gz"
        await api.download_blob(digest, path)
        if path.read_bytes()[:2] != b"\x1f\x8b":
            continue
        if any(f"ck-{tag}-" in name for name in _names(path)):
            checkpoints[digest] = secrets.leaks(path)
    leaked = {d: names for d, names in checkpoints.items() if names}
    print(f"{len(checkpoints)} checkpoints stored, {len(leaked)} with host content")
    assert len(checkpoints) >= 3, "the job's checkpoints were not taken"
    assert leaked == {}, f"{len(leaked)} of {len(checkpoints)} checkpoints leaked: {leaked}"
    # The container is frozen while its checkpoint is archived: nothing changes under
    # the walk, so no checkpoint is refused for a swapped entry either, unless the
    # runtime could not freeze it that time (runc gives up on busy tasks; logged).
    log = cluster.agents["docker"].log_text()
    refused = re.findall(rf"checkpoint of {done.id} \(.*?\) not saved: (.*)", log)
    unfrozen = re.findall(rf"attempt 1 of {done.id} not frozen: (.*)", log)
    saved = re.findall(rf"checkpoint of {done.id}/1 saved", log)
    print(f"{len(saved)} saved, {len(unfrozen)} not frozen, {refused=}")
    assert len(refused) <= len(unfrozen), (refused, unfrozen)
    assert len(saved) >= 3


async def test_outputs_never_hold_host_files_a_swapped_link_points_to(
    api: BerthClient, cluster: Cluster, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:12]
    secrets = _secrets(cluster, "process", tmp_path, tag)
    inputs = await _upload_helper(api, tmp_path)
    outcomes: list[str] = []
    for run in range(OUTPUT_RUNS):
        outcomes.append(await _swap_outputs(api, secrets, inputs, f"out{run}-{tag}-", tmp_path))
    print(f"outputs of {OUTPUT_RUNS} jobs: {outcomes}")
    assert not [o for o in outcomes if o.startswith("leaked")], outcomes
    # Refused outputs fail the job, naming the entry that changed.
    refused = [o for o in outcomes if o.startswith("refused")]
    assert all("changed while it was archived" in o for o in refused), refused


async def _swap_outputs(
    api: BerthClient, secrets: HostSecrets, inputs: str, prefix: str, tmp_path: Path
) -> str:
    """One job whose outputs are swapped while the agent archives them: ``leaked ...``,
    ``clean`` or ``refused: ...``."""
    # Two helpers, one a core, each with its own names. They leave the job's process
    # group, so the agent's kill of the group at the job's exit does not reach them;
    # the job exits once both swap (they made their last links).
    starts, waits = [], []
    for h in "ab":
        args = " ".join(secrets.specs(f"{prefix}{h}-", files=FILES, trees=TREES // 2))
        last = f"out/{prefix}{h}-tree{TREES // 2 - 1}"
        starts.append(
            f"setsid -f in/link_swapper out {OUTPUT_SWAP_S} {args} </dev/null >/dev/null 2>&1"
        )
        waits.append(f"while [ ! -L {last}.lnk ] && [ ! -L {last} ]; do sleep 0.05; done")
    script = 'cd "$BERTH_WORKSPACE"; ' + "; ".join(starts + waits)
    job = await api.submit_job(spec(script, "process", inputs=inputs))
    try:
        done = await wait_done(api, job.id, timeout=60)
    finally:
        # The helper is done before anything else runs.
        await poll(lambda: not _swapping(prefix), OUTPUT_SWAP_S + 30, what="the helper to exit")
    if done.outputs is None:
        assert done.state == "failed" and done.error is not None, done
        assert "outputs not stored" in done.error, done.error
        return f"refused: {done.error}"
    archive = tmp_path / f"{prefix}outputs.tar.gz"
    try:
        await api.download_outputs(job.id, archive)
    except NotFound:
        pytest.fail(f"outputs {done.outputs} named but not stored")
    leaked = secrets.leaks(archive)
    return f"leaked {leaked}" if leaked else "clean"


def _names(archive: Path) -> list[str]:
    import tarfile

    with tarfile.open(archive, "r:gz") as tar:
        return tar.getnames()


def _swapping(prefix: str) -> bool:
    """True while a link_swapper started with names beginning ``prefix`` runs here."""
    needle = prefix.encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False

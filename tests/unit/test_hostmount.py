"""Pinning host mounts (agent.hostmount) on real directories, links and bind mounts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.hostmount import MountRefused, PinnedMounts, pin
from agent.policy import NodePolicy
from common.models import JobResources, JobSpec, Mount


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "f").write_text("inside\n")
    outside.mkdir()
    (outside / "f").write_text("outside\n")
    return allowed, outside


def test_a_pinned_directory_is_the_one_checked(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs
    p = pin(str(allowed / "sub"), NodePolicy([f"mount:{allowed}"]))
    try:
        st = os.stat(allowed / "sub")
        assert (p.dev, p.ino, p.is_dir) == (st.st_dev, st.st_ino, True)
    finally:
        p.close()


def test_a_link_out_of_the_allowed_directory_is_refused(dirs: tuple[Path, Path]) -> None:
    allowed, outside = dirs
    (allowed / "out").symlink_to(outside)
    with pytest.raises(MountRefused, match="refused by node policy"):
        pin(str(allowed / "out"), NodePolicy([f"mount:{allowed}"]))


def test_a_missing_source_is_refused(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs
    with pytest.raises(MountRefused, match="does not exist on this node"):
        pin(str(allowed / "nothing"), NodePolicy([f"mount:{allowed}"]))


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_a_path_swapped_for_a_link_after_pinning_still_binds_what_was_checked(
    dirs: tuple[Path, Path],
) -> None:
    allowed, outside = dirs
    pinned = PinnedMounts([str(allowed / "sub")], NodePolicy([f"mount:{allowed}"]))
    try:
        (allowed / "sub").rename(allowed / "away")
        (allowed / "sub").symlink_to(outside)
        [staged] = pinned.paths
        assert Path(staged, "f").read_text() == "inside\n"
        assert pinned.mismatch([staged]) is None
        assert pinned.mismatch([str(allowed / "sub")]) is not None
    finally:
        pinned.release()
    assert not os.path.exists(staged)
    assert (allowed / "away" / "f").read_text() == "inside\n"  # released, not deleted


def _rw(source: Path) -> JobSpec:
    return JobSpec(
        image="x",
        command="true",
        resources=JobResources(cpu=0.1, memory_mb=16),
        mounts=(Mount(str(source), "/data", read_only=False),),
    )


def test_a_read_write_mount_holding_another_allowed_directory_is_refused(
    dirs: tuple[Path, Path],
) -> None:
    allowed, _ = dirs
    node = NodePolicy([f"mount:{allowed}", f"mount:{allowed / 'sub'}"])
    refusal = node.refusal(_rw(allowed))
    assert refusal is not None
    assert "would hold the allowed directory" in refusal
    # Read-only, or the inner directory itself, is fine.
    ro = JobSpec(
        image="x",
        command="true",
        resources=JobResources(cpu=0.1, memory_mb=16),
        mounts=(Mount(str(allowed), "/data"),),
    )
    assert node.refusal(ro) is None
    assert node.refusal(_rw(allowed / "sub")) is None

"""An attempt's files: archives made and safely extracted, the workspace layout, the
container mounts, and the sampling of resource use."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.executors.base import AttemptInfo, Mounts, UsageSample
from agent.executors.docker import container_options, usage_from_stats
from agent.usage import UsageTracker
from agent.workspace import Workspace, WorkspaceError, Workspaces
from common.archives import ArchiveError, create_tar_gz, extract, sha256_file
from common.models import JobResources, JobSpec

# --- helpers -------------------------------------------------------------------------


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def _zip(path: Path, *members: tuple[str, bytes, int]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def _tree(root: Path) -> dict[str, str]:
    """Every entry below root: file contents, link targets, "dir"."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_text()
    return out


@pytest.fixture
def area(tmp_path: Path) -> tuple[Path, Path, Callable[[], list[str]]]:
    """A destination inside a box; ``outside()`` lists what appeared in the box
    beside the destination and the archive."""
    box = tmp_path / "box"
    dest = box / "dest"
    box.mkdir()

    def outside() -> list[str]:
        return sorted(p.name for p in box.iterdir() if p.name not in ("dest", "a.tgz", "a.zip"))

    return box, dest, outside


# --- archives: made and read back ------------------------------------------------------


def test_tree_round_trips_with_links_and_modes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.txt").write_text("hello")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "a" / "l").symlink_to("b/f.txt")
    os.link(src / "a" / "b" / "f.txt", src / "same")
    os.mkfifo(src / "fifo")
    archive = tmp_path / "a.tgz"
    assert create_tar_gz(src, archive) == 6
    dest = tmp_path / "dest"
    extract(archive, dest)
    assert _tree(dest) == {
        "a": "dir",
        "a/b": "dir",
        "a/b/f.txt": "hello",
        "a/l": "-> b/f.txt",
        "run.sh": "#!/bin/sh\n",
        "same": "hello",
    }
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755


def test_the_same_tree_gives_the_same_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "state").write_text("step 1")
    create_tar_gz(src, tmp_path / "one.tgz")
    (src / "d" / "tmp").write_text("scratch")  # the directory's time changes
    (src / "d" / "tmp").unlink()
    create_tar_gz(src, tmp_path / "two.tgz")
    assert sha256_file(tmp_path / "one.tgz") == sha256_file(tmp_path / "two.tgz")
    # Extracted and archived again (a checkpoint restored, unchanged): still the same.
    extract(tmp_path / "one.tgz", tmp_path / "back")
    create_tar_gz(tmp_path / "back", tmp_path / "three.tgz")
    assert sha256_file(tmp_path / "three.tgz") == sha256_file(tmp_path / "one.tgz")


def test_archiving_respects_its_bounds_and_refuses_a_link_as_the_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(b"x" * 100)
    with pytest.raises(ArchiveError, match="more than 4 files"):
        create_tar_gz(src, tmp_path / "a.tgz", max_members=4)
    with pytest.raises(ArchiveError, match="to archive"):
        create_tar_gz(src, tmp_path / "a.tgz", max_bytes=450)
    assert not (tmp_path / "a.tgz").exists()
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(ArchiveError, match="not a directory"):
        create_tar_gz(tmp_path / "link", tmp_path / "a.tgz")


def test_zip_archives_are_extracted(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "a.zip",
        ("data/", b"", stat.S_IFDIR | 0o755),
        ("data/x.csv", b"1,2\n", stat.S_IFREG | 0o644),
        ("data/latest", b"x.csv", stat.S_IFLNK | 0o777),
        ("plain.txt", b"no mode", 0),
    )
    extract(archive, tmp_path / "dest")
    assert _tree(tmp_path / "dest") == {
        "data": "dir",
        "data/x.csv": "1,2\n",
        "data/latest": "-> x.csv",
        "plain.txt": "no mode",
    }


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", _file("tool", b"#!", mode=0o4755))
    extract(archive, tmp_path / "dest")
    assert stat.S_IMODE((tmp_path / "dest" / "tool").stat().st_mode) == 0o755


def test_a_later_entry_replaces_a_hard_link_instead_of_writing_through_it(
    tmp_path: Path,
) -> None:
    archive = _tar(
        tmp_path / "a.tgz",
        _file("orig", b"original"),
        _link("alias", "orig", tarfile.LNKTYPE),
        _file("alias", b"replaced"),
    )
    extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "orig").read_text() == "original"
    assert (tmp_path / "dest" / "alias").read_text() == "replaced"


# --- archives: hostile ones ------------------------------------------------------------

HOSTILE_TARS: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]] = {
    "absolute path": ([_file("/box-escape")], "absolute path"),
    "dot-dot": ([_file("../escape")], "points outside"),
    "dot-dot inside a name": ([_file("a/../../escape")], "points outside"),
    "absolute symlink": ([_link("evil", "/etc")], "points outside"),
    "relative symlink out": ([_link("evil", "../../etc")], "points outside"),
    "symlink then a file through it": (
        [_link("evil", ".."), _file("evil/escape")],
        "points outside",
    ),
    "chain of links out": (
        [_link("a", "."), _link("b", "a/a/.."), _file("c")],
        "points outside",
    ),
    "absolute hard link": ([_link("hl", "/etc/passwd", tarfile.LNKTYPE)], "absolute path"),
    "hard link out": ([_link("hl", "../escape", tarfile.LNKTYPE)], "points outside"),
    "hard link to nothing": ([_link("hl", "missing", tarfile.LNKTYPE)], "not in the archive"),
    "character device": ([_special("tty", tarfile.CHRTYPE)], "device file"),
    "block device": ([_special("sda", tarfile.BLKTYPE)], "device file"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "fifo"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_members_are_refused_and_nothing_lands_outside(
    case: str, area: tuple[Path, Path, Callable[[], list[str]]]
) -> None:
    box, dest, outside = area
    members, message = HOSTILE_TARS[case]
    archive = _tar(box / "a.tgz", *members)
    with pytest.raises(ArchiveError, match=message):
        extract(archive, dest)
    assert outside() == []
    assert not Path("/box-escape").exists()
    # No link that leads out is left behind either.
    for p in dest.rglob("*"):
        assert os.path.realpath(p).startswith(str(dest.resolve()))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../escape", b"x", stat.S_IFREG | 0o644)], "points outside"),
        ([("/abs", b"x", stat.S_IFREG | 0o644)], "absolute path"),
        ([("evil", b"/etc", stat.S_IFLNK | 0o777)], "points outside"),
        ([("evil", b"../..", stat.S_IFLNK | 0o777)], "points outside"),
        ([("dev", b"", stat.S_IFCHR | 0o600)], "device file"),
    ],
)
def test_hostile_zip_members_are_refused(
    members: list[tuple[str, bytes, int]],
    message: str,
    area: tuple[Path, Path, Callable[[], list[str]]],
) -> None:
    box, dest, outside = area
    with pytest.raises(ArchiveError, match=message):
        extract(_zip(box / "a.zip", *members), dest)
    assert outside() == []


def test_tar_bomb_past_the_size_bound_is_refused_before_it_is_written(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", _file("big", b"\0" * 200_000))
    with pytest.raises(ArchiveError, match="expands to more than"):
        extract(archive, tmp_path / "dest", max_bytes=100_000)
    assert not (tmp_path / "dest" / "big").exists()


def test_many_small_files_past_the_size_bound_are_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", *[_file(f"f{i}", b"y" * 1000) for i in range(50)])
    with pytest.raises(ArchiveError, match="expands to more than"):
        extract(archive, tmp_path / "dest", max_bytes=10_000)
    assert len(list((tmp_path / "dest").iterdir())) <= 10


def test_archives_with_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", *[_file(f"f{i}") for i in range(20)])
    with pytest.raises(ArchiveError, match="more than 10 members"):
        extract(archive, tmp_path / "dest", max_members=10)
    zipped = _zip(tmp_path / "a.zip", *[(f"f{i}", b"x", 0) for i in range(20)])
    with pytest.raises(ArchiveError, match="more than 10 members"):
        extract(zipped, tmp_path / "zdest", max_members=10)
    assert not (tmp_path / "zdest").exists() or not any((tmp_path / "zdest").iterdir())


def test_zip_bomb_is_refused_from_its_declared_sizes(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\0" * 1_000_000)  # compresses to about 1 KiB
    assert archive.stat().st_size < 10_000
    with pytest.raises(ArchiveError, match="expands to more than"):
        extract(archive, tmp_path / "dest", max_bytes=500_000)
    assert not (tmp_path / "dest" / "zeros").exists()


def test_what_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"hello, not an archive" * 50)
    with pytest.raises(ArchiveError, match="not a tar or zip archive"):
        extract(tmp_path / "junk", tmp_path / "dest")
    (tmp_path / "cut.tgz").write_bytes(_tar(tmp_path / "a.tgz", _file("f")).read_bytes()[:30])
    with pytest.raises(ArchiveError):
        extract(tmp_path / "cut.tgz", tmp_path / "dest")


# --- the workspace -----------------------------------------------------------------------


def test_workspace_layout_is_made_afresh_and_writable_for_any_user(tmp_path: Path) -> None:
    ws = Workspaces(tmp_path / "ws").of("0a1b", 2)
    ws.create()
    (ws.outputs_dir / "old").write_text("left over")
    ws.create()
    assert ws.root == (tmp_path / "ws" / "0a1b-2").absolute()
    assert ws.mounts == Mounts(ws.root / "workspace", ws.root / "checkpoint")
    assert ws.inputs_dir == ws.mounts.workspace / "in"
    assert list(ws.outputs_dir.iterdir()) == []
    for d in (ws.mounts.workspace, ws.outputs_dir, ws.checkpoint_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o777


def test_outputs_are_archived_only_when_there_are_some(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "w")
    ws.create()
    assert ws.archive(ws.outputs_dir) is None
    (ws.outputs_dir / "result.txt").write_text("42")
    made = ws.archive(ws.outputs_dir)
    assert made is not None and made.parent == ws.root
    extract(made, tmp_path / "back")
    assert _tree(tmp_path / "back") == {"result.txt": "42"}


def test_an_outputs_dir_replaced_by_a_link_is_not_followed(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "w")
    ws.create()
    secret = tmp_path / "host"
    secret.mkdir()
    (secret / "shadow").write_text("secret")
    ws.outputs_dir.rmdir()
    ws.outputs_dir.symlink_to(secret)
    assert ws.archive(ws.outputs_dir) is None


def test_a_refused_input_is_the_jobs_fault(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "w")
    ws.create()
    archive = _tar(tmp_path / "in.tgz", _file("../../escape"))
    with pytest.raises(WorkspaceError) as err:
        ws.extract(archive, ws.inputs_dir, "input archive 0123")
    assert not err.value.infra
    assert err.value.message.startswith("input archive 0123 refused: ")
    assert "points outside" in err.value.message
    assert not archive.exists()


def test_leftover_workspaces_are_those_of_attempts_not_kept(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path / "ws")
    for job, attempt in (("aa", 1), ("aa", 2), ("bb", 1)):
        spaces.of(job, attempt).create()
    (tmp_path / "ws" / "stray").mkdir()
    left = spaces.leftovers({("aa", 2)})
    assert sorted(p.name for p in left) == ["aa-1", "bb-1", "stray"]
    with pytest.raises(ValueError):
        spaces.of("../x", 1)


# --- container mounts -----------------------------------------------------------------


def test_container_gets_its_workspace_and_checkpoint_and_nothing_else(tmp_path: Path) -> None:
    info = AttemptInfo("j1", 1, "n1", 60.0, 64, checkpoint_interval_s=30.0)
    spec = JobSpec(
        image="busybox",
        resources=JobResources(cpu=1, memory_mb=64),
        checkpoint_interval_s=30.0,
    )
    mounts = Mounts(tmp_path / "ws", tmp_path / "ck")
    opts = container_options(info, spec, mounts=mounts)
    host = opts["host_config"]
    assert host["binds"] == {
        str(tmp_path / "ws"): {"bind": "/workspace", "mode": "rw"},
        str(tmp_path / "ck"): {"bind": "/checkpoint", "mode": "rw"},
    }
    assert host["cap_drop"] == ["ALL"]
    assert host["security_opt"] == ["no-new-privileges"]
    assert "docker.sock" not in repr(opts)
    assert opts["environment"]["BERTH_WORKSPACE"] == "/workspace"
    assert opts["environment"]["BERTH_CHECKPOINT"] == "/checkpoint"
    assert opts["labels"]["berth.checkpoint_interval_s"] == "30.0"
    assert "binds" not in container_options(info, spec)["host_config"]


# --- resource use ---------------------------------------------------------------------


def test_docker_stats_give_cpu_and_memory_without_page_cache() -> None:
    mib = 1024 * 1024
    v2 = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000_000_000},
            "system_cpu_usage": 20_000_000_000,
            "online_cpus": 2,
        },
        "precpu_stats": {
            "cpu_usage": {"total_usage": 2_000_000_000},
            "system_cpu_usage": 18_000_000_000,
        },
        "memory_stats": {"usage": 30 * mib, "stats": {"inactive_file": 10 * mib}},
    }
    assert usage_from_stats(v2) == UsageSample(cpu_percent=100.0, memory_mb=20.0)
    v1 = dict(v2, memory_stats={"usage": 30 * mib, "stats": {"total_inactive_file": 6 * mib}})
    assert usage_from_stats(v1) == UsageSample(cpu_percent=100.0, memory_mb=24.0)
    stopped = {"cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}}
    assert usage_from_stats(stopped) is None


def test_usage_keeps_peaks_and_is_reported_at_most_every_interval() -> None:
    tracker = UsageTracker(report_interval_s=5.0)
    assert not tracker.due(0.0)
    tracker.add(UsageSample(50.0, 10.0))
    assert tracker.due(0.0)
    tracker.sent(0.0)
    usage = tracker.add(UsageSample(20.0, 30.0))
    assert (usage.cpu_percent, usage.memory_mb) == (20.0, 30.0)
    assert (usage.peak_cpu_percent, usage.peak_memory_mb) == (50.0, 30.0)
    usage = tracker.add(UsageSample(5.0, 12.0))
    assert (usage.peak_cpu_percent, usage.peak_memory_mb) == (50.0, 30.0)
    assert not tracker.due(4.9)
    assert tracker.due(5.0)

"""Finding the agent's cgroup and where its jobs' cgroups go, from /proc text alone."""

from __future__ import annotations

from pathlib import Path

from agent.executors.jobcgroup import (
    JOBS_DIR,
    Cgroup2Mount,
    JobCgroups,
    cgroup_name,
    locate,
    parse_mountinfo,
    parse_own_cgroup,
)

#: a hybrid host: cgroup v1 controllers, and a cgroup2 without them at .../unified
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
#: a container without its own cgroup namespace: the host's tree bound at its cgroup
BOUND = (
    "1083 1075 0:30 /system.slice/docker-ab12.scope /sys/fs/cgroup ro,nosuid shared:9 "
    "- cgroup2 cgroup2 rw,nsdelegate\n"
)


def test_mountinfo_yields_cgroup2_mounts_only() -> None:
    assert parse_mountinfo(HYBRID) == [Cgroup2Mount(Path("/sys/fs/cgroup/unified"), "/", False)]


def test_mountinfo_reads_optional_fields_escapes_and_read_only() -> None:
    text = BOUND + "50 1 0:40 / /mnt/my\\040cgroups rw master:1 - cgroup2 none rw\n"
    assert parse_mountinfo(text) == [
        Cgroup2Mount(Path("/sys/fs/cgroup"), "/system.slice/docker-ab12.scope", True),
        Cgroup2Mount(Path("/mnt/my cgroups"), "/", False),
    ]


def test_own_cgroup_is_the_unified_line() -> None:
    text = "4:memory:/process_api/60\n1:cpu:/\n0::/user.slice/session-3.scope\n"
    assert parse_own_cgroup(text) == "/user.slice/session-3.scope"
    assert parse_own_cgroup("0::/\n") == "/"
    assert parse_own_cgroup("4:memory:/x\n1:name=systemd:/\n") is None


def test_locate_joins_the_path_below_the_mounts_root() -> None:
    unified = Cgroup2Mount(Path("/sys/fs/cgroup"), "/", False)
    assert locate([unified], "/") == (Path("/sys/fs/cgroup"), unified)
    assert locate([unified], "/a.slice/b.service") == (
        Path("/sys/fs/cgroup/a.slice/b.service"),
        unified,
    )
    bound = Cgroup2Mount(Path("/sys/fs/cgroup"), "/system.slice/docker-ab12.scope", False)
    assert locate([bound], "/system.slice/docker-ab12.scope/agent") == (
        Path("/sys/fs/cgroup/agent"),
        bound,
    )
    # A mount that shows another subtree does not show this cgroup.
    assert locate([bound], "/system.slice/docker-ab123.scope") is None


def test_cgroup_names_hold_no_slash_and_no_leading_dot() -> None:
    assert cgroup_name("n0a1118e4e43086") == "n0a1118e4e43086"
    assert cgroup_name("job-7") == "job-7"
    assert cgroup_name("../x/y") == "_.._x_y"
    assert cgroup_name(".") == "_."
    assert cgroup_name("") == "_"


def _proc(tmp_path: Path, own: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(f"1:cpu:/\n0::{own}\n")
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def test_probe_puts_the_jobs_below_the_agents_cgroup(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    (mount / "agent.service").mkdir(parents=True)
    (mount / "agent.service" / "cgroup.procs").touch()
    proc = _proc(tmp_path, "/agent.service", f"41 31 0:38 / {mount} rw - cgroup2 cgroup2 rw\n")
    cgroups, why = JobCgroups.probe(proc)
    assert cgroups is not None, why
    assert cgroups.base == mount / "agent.service" / JOBS_DIR
    assert [p.name for p in cgroups.base.iterdir()] == []  # the probe cleaned up


def test_probe_says_why_not(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    mount.mkdir()
    read_only = _proc(tmp_path, "/", f"41 31 0:38 / {mount} ro - cgroup2 cgroup2 rw\n")
    cgroups, why = JobCgroups.probe(read_only)
    assert cgroups is None and "read-only" in why
    (read_only / "mountinfo").write_text(HYBRID.replace("cgroup2 cgroup2", "cgroup cgroup"))
    cgroups, why = JobCgroups.probe(read_only)
    assert cgroups is None and "no cgroup2 mount" in why
    (read_only / "cgroup").write_text("1:cpu:/\n")
    cgroups, why = JobCgroups.probe(read_only)
    assert cgroups is None and "no cgroup v2" in why
    cgroups, why = JobCgroups.probe(tmp_path / "absent")
    assert cgroups is None and "cannot read" in why

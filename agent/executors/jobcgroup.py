"""Job cgroups: one cgroup (v2) per attempt of the process executor.

The kernel keeps every process a job starts in the job's cgroup, whatever session or
process group it moves to (``setsid``, a daemon's double fork), so the whole job can be
listed, signalled and killed, also by the next run of the agent after this one died.
The subtree sits under the cgroup the agent runs in::

    <agent's cgroup>/berth-jobs/<node id>/<job id>-<attempt>

No controller is enabled anywhere in it: these cgroups only group processes. That keeps
cgroup v2's "no internal processes" rule out of the way (the agent may stay in its own
cgroup, above the jobs: the rule binds only cgroups that hand controllers down), and it
works on a hybrid host (a cgroup2 without controllers at /sys/fs/cgroup/unified) as on
a unified one. A job joins its cgroup in the child between fork and exec (the executor
writes to the fd of :meth:`JobCgroup.open_procs`), before it can start anything.

Signals go to every process in the cgroup, then to those that showed up meanwhile.
Killing writes ``cgroup.kill`` (Linux 5.14+); without it the cgroup is frozen
(``cgroup.freeze``) so that nothing forks, each process is SIGKILLed and the cgroup
thawed, until it is empty. A cgroup is removed
(rmdir) only once empty. A job that runs as root could move itself out on purpose: this
catches what jobs leave behind by accident, it does not contain hostile ones.

:meth:`JobCgroups.probe` says whether the host allows it: a writable cgroup2 mount that
holds the agent's cgroup, below which the agent may create cgroups (root, or a delegated
subtree). Failures are ``OSError``; nothing here raises anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: the directory of job cgroups under the agent's cgroup
JOBS_DIR = "berth-jobs"
#: seconds a killed cgroup gets to empty before it is left for the next reap
EMPTY_TIMEOUT_S = 5.0
#: seconds between looks at a cgroup that is emptying
EMPTY_POLL_S = 0.02
#: rounds of SIGKILL without cgroup.kill before giving up on a cgroup that keeps forking
KILL_ROUNDS = 20
#: attempts at creating a job cgroup while its node's directory is being pruned
CREATE_TRIES = 3
#: rounds of a signal sent to processes a cgroup's processes forked meanwhile
SIGNAL_ROUNDS = 5
#: seconds to wait for a cgroup to report itself frozen
FREEZE_TIMEOUT_S = 1.0
#: seconds between looks at a cgroup that is freezing
FREEZE_POLL_S = 0.001

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Cgroup2Mount:
    """One mount of the cgroup2 filesystem, from /proc/self/mountinfo."""

    #: where it is mounted
    mountpoint: Path
    #: the cgroup it shows at its mountpoint ("/" unless it is a bind mount of a subtree)
    root: str
    read_only: bool


def parse_mountinfo(text: str) -> list[Cgroup2Mount]:
    """The cgroup2 mounts listed in a /proc/PID/mountinfo."""
    mounts = []
    for line in text.splitlines():
        fields, sep, tail = line.partition(" - ")
        if not sep:
            continue
        left, right = fields.split(), tail.split()
        if len(left) < 6 or not right or right[0] != "cgroup2":
            continue
        options = left[5].split(",")
        mounts.append(Cgroup2Mount(Path(_unescape(left[4])), _unescape(left[3]), "ro" in options))
    return mounts


def parse_own_cgroup(text: str) -> str | None:
    """The cgroup v2 path in a /proc/PID/cgroup (its ``0::`` line), None without one."""
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            return path.removesuffix(" (deleted)") or None
    return None


def locate(mounts: list[Cgroup2Mount], own: str) -> tuple[Path, Cgroup2Mount] | None:
    """The directory of cgroup ``own`` and the mount it is seen through, if one shows it."""
    for mount in mounts:
        root = mount.root.rstrip("/")
        if own != root and not own.startswith(root + "/"):
            continue
        rel = own[len(root) :].strip("/")
        return (mount.mountpoint / rel if rel else mount.mountpoint), mount
    return None


def cgroup_name(text: str) -> str:
    """``text`` as one cgroup directory name (no slash, no leading dot)."""
    name = _UNSAFE.sub("_", text)
    return "_" + name if name.startswith(".") or not name else name


class JobCgroups:
    """The job cgroups of one agent: ``base/<node id>/<job id>-<attempt>``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def probe(cls, proc: Path = Path("/proc/self")) -> tuple[JobCgroups | None, str]:
        """The job cgroups of an agent seen through ``proc``, or None and why not."""
        try:
            own = parse_own_cgroup((proc / "cgroup").read_text())
            mounts = parse_mountinfo((proc / "mountinfo").read_text())
        except OSError as e:
            return None, f"cannot read {proc}: {e}"
        if own is None:
            return None, "this process is in no cgroup v2 hierarchy"
        found = locate(mounts, own)
        if found is None:
            return None, f"no cgroup2 mount shows this process's cgroup {own}"
        here, mount = found
        if mount.read_only:
            return None, f"the cgroup2 mount {mount.mountpoint} is read-only"
        base = here / JOBS_DIR
        probe = base / f"probe-{os.getpid()}"
        # Moving a process needs write access to cgroup.procs of the common ancestor of
        # where it is and where it goes: the agent's cgroup, for its children.
        if not os.access(here / "cgroup.procs", os.W_OK):
            return None, f"may not move processes out of {here}"
        try:
            base.mkdir(exist_ok=True)
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError as e:
            return None, f"cannot create cgroups below {here}: {e.strerror or e}"
        return cls(base), ""

    def create(self, node_id: str, name: str) -> JobCgroup:
        """The (new, empty) cgroup ``name`` of node ``node_id``."""
        node = self.base / cgroup_name(node_id)
        path = node / cgroup_name(name)
        for _ in range(CREATE_TRIES - 1):
            try:
                node.mkdir(parents=True, exist_ok=True)
                path.mkdir(exist_ok=True)
                break
            except FileNotFoundError:
                continue  # the node's directory was pruned in between: make it again
        else:
            path.mkdir(parents=True, exist_ok=True)
        return JobCgroup(path)

    def of_node(self, node_id: str) -> list[JobCgroup]:
        """The job cgroups of node ``node_id`` that are there now."""
        node = self.base / cgroup_name(node_id)
        try:
            return sorted(
                (JobCgroup(p) for p in node.iterdir() if p.is_dir()), key=lambda c: c.path
            )
        except FileNotFoundError:
            return []

    def prune(self, node_id: str) -> None:
        """Remove the node's directory if no job cgroup is left in it."""
        with contextlib.suppress(OSError):
            (self.base / cgroup_name(node_id)).rmdir()


class JobCgroup:
    """The cgroup of one attempt (and any cgroups the job made below it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"JobCgroup({str(self.path)!r})"

    def open_procs(self) -> int:
        """A write fd of its ``cgroup.procs``: a process that writes its pid there joins.

        Opened in the agent, written in the child before exec: the child then needs no
        path lookup, and the fd is closed on exec.
        """
        return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def pids(self) -> list[int]:
        """Every process in it, sub-cgroups included; [] once it is gone."""
        found: list[int] = []
        for cgroup in self._tree():
            with contextlib.suppress(OSError, ValueError):
                found += [int(x) for x in (cgroup / "cgroup.procs").read_text().split()]
        return found

    def populated(self) -> bool:
        """True while a process is in it or below it."""
        try:
            events = (self.path / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        except OSError:
            return bool(self.pids())
        return "populated 1" in events.splitlines()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process in it, and to those they fork meanwhile: it is
        sent again to processes that were not there yet, until no new one shows up."""
        sent: set[int] = set()
        for _ in range(SIGNAL_ROUNDS):
            new = [pid for pid in self.pids() if pid not in sent]
            if not new:
                return
            for pid in new:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            sent.update(new)

    def kill(self) -> None:
        """SIGKILL every process in it, the ones it forks meanwhile too."""
        try:
            (self.path / "cgroup.kill").write_text("1")
            return
        except FileNotFoundError:
            if not self.path.exists():
                return
        except OSError:
            pass
        self._kill_frozen()

    def rmdir(self) -> bool:
        """Remove it (and its sub-cgroups) if empty; True once it is gone."""
        for cgroup in reversed(self._tree()):
            try:
                cgroup.rmdir()
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise
        return True

    def remove_if_empty(self) -> bool:
        """Remove it at once if nothing is in it and it has no sub-cgroups (a few
        system calls, fit for the event loop); True once it is gone."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False  # busy, or the job made cgroups below it
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # a job of the node may hold it
        return True

    async def destroy(self, timeout: float = EMPTY_TIMEOUT_S) -> bool:
        """Kill everything in it, wait for it to empty and remove it, and its node's
        directory if that is empty now; True once it is gone."""
        return await asyncio.to_thread(self.destroy_blocking, timeout)

    def destroy_blocking(self, timeout: float = EMPTY_TIMEOUT_S) -> bool:
        """:meth:`destroy` for a thread or a synchronous caller."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.populated():
                try:
                    if self.rmdir():
                        with contextlib.suppress(OSError):
                            self.path.parent.rmdir()  # a job of the node may hold it
                        return True
                except OSError:
                    return False
            else:
                self.kill()
            if time.monotonic() > deadline:
                return False
            time.sleep(EMPTY_POLL_S)

    def _kill_frozen(self) -> None:
        # Frozen, nothing forks; SIGKILL reaches frozen processes. (Other signals are not
        # sent while frozen: a SIGSTOP that lands then can leave a task frozen after the
        # thaw.)
        for _ in range(KILL_ROUNDS):
            with self._frozen():
                pids = self.pids()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            if not pids:
                return
            time.sleep(EMPTY_POLL_S)

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """Freeze it for the block (cgroup.freeze, Linux 5.2+), if it can be frozen.

        Waits up to FREEZE_TIMEOUT_S for the kernel to say it is frozen: from then on
        every process in it, a child forked meanwhile included, is listed and stopped.
        """
        freeze = self.path / "cgroup.freeze"
        try:
            freeze.write_text("1")
        except OSError:
            yield
            return
        try:
            deadline = time.monotonic() + FREEZE_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    if "frozen 1" in (self.path / "cgroup.events").read_text().splitlines():
                        break
                except OSError:
                    break
                time.sleep(FREEZE_POLL_S)
            yield
        finally:
            with contextlib.suppress(OSError):
                freeze.write_text("0")

    def _tree(self) -> list[Path]:
        """This cgroup and the ones below it, parents first."""
        found = []
        for top, dirs, _files in os.walk(self.path):
            found.append(Path(top))
            dirs.sort()
        return found


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

"""The process executor: runs a job's command as local processes. NOT a sandbox.

For hosts without Docker. The command runs with the agent's user and privileges, sees
the host's files and network, and its resource request is not enforced; the image is
ignored, and so are its ``pull_policy`` and ``image_pull_secret`` (nothing is pulled).
Stdout and stderr are one stream. The attempt's workspace is its working directory
(unless the job names one) and ``$BERTH_WORKSPACE``; its checkpoint directory is
``$BERTH_CHECKPOINT``.

Where the host allows it (a writable cgroup v2, see :mod:`agent.executors.jobcgroup`),
each attempt runs in a cgroup of its own, joined before exec, so every process it
starts stays in reach, also one that left its session or process group (``setsid``, a
daemon): a timeout or cancel sends SIGTERM to every process in the cgroup, then kills
the cgroup after the grace; the job's exit kills what it left running; pause and resume
are SIGSTOP and SIGCONT to each process in it; its resource use is the sum over them
(psutil). Otherwise (not root, a read-only cgroupfs, ``BERTH_PROCESS_CGROUPS=off``) the
same is done to the attempt's own session and process group (``start_new_session``),
and processes that left it are found by the environment the executor gave them
(``BERTH_JOB_ID``, ``BERTH_ATTEMPT`` and ``HOME``), which a job can change. The agent
logs once at start which of the two it uses.

A job joins its cgroup through a shell that writes its own pid to ``cgroup.procs`` and
then execs the command (same pid, no Python run between fork and exec, so the agent
forks with vfork, several times cheaper than a fork with a pre-exec function). Without
cgroups the job's main process gets ``PR_SET_PDEATHSIG(SIGKILL)`` instead: it dies with
the agent, SIGKILL included. A process cannot be re-attached after the agent restarts:
on start the agent kills what a previous run left, the processes in the node's job
cgroups and those of the attempts recorded in the state dir, and reports those
attempts as lost (an infrastructure failure).

It cannot honour what only a container gives: a job that asks for a read-only root
filesystem, another ``user``, host ``mounts`` or ``privileged`` mode is refused (it
fails, saying so) rather than run without what it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import getpass
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import psutil

from agent import gpus
from agent.executors.base import (
    AttemptInfo,
    Execution,
    Executor,
    ExitStatus,
    Mounts,
    StartError,
    UsageSample,
    empty_stream,
)
from agent.executors.jobcgroup import JOBS_DIR, JobCgroup, JobCgroups
from agent.registryauth import PullSecret
from agent.secretvalues import plain_env
from common import codec
from common.errors import BerthError
from common.models import JobSpec

log = logging.getLogger(__name__)

#: bytes read from a job's output at a time
READ_CHUNK = 64 * 1024
#: seconds to wait for a job's output to close after its main process exited
OUTPUT_DRAIN_S = 2.0
#: environment variables of the agent passed on to jobs
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
#: the agent's environment variable that turns job cgroups off when it is "off"
CGROUPS_ENV = "BERTH_PROCESS_CGROUPS"
#: prctl(2) option: the signal a process gets when the thread that forked it dies
PR_SET_PDEATHSIG = 1
#: run by /bin/sh with the cgroup's procs file as $0 and the job's argv as "$@"
JOIN_CGROUP = 'echo $$ >"$0" && exec "$@"'


def unsupported(spec: JobSpec) -> str | None:
    """Why this executor refuses a job that asks for container isolation, or None."""
    asked = [
        what
        for wanted, what in (
            (spec.read_only, "read_only"),
            (spec.user is not None, "user"),
            (bool(spec.mounts), "mounts"),
            (spec.privileged, "privileged"),
        )
        if wanted
    ]
    if not asked:
        return None
    return (
        f"the process executor cannot honour {', '.join(asked)}: it runs jobs as local "
        "processes, not containers (run this job on a node with the docker executor)"
    )


def command_argv(spec: JobSpec) -> list[str]:
    """Exec form for a list, ``sh -c`` for a string."""
    if spec.command is None:
        raise StartError("the process executor needs a command (it ignores the image)", infra=False)
    if isinstance(spec.command, str):
        return ["sh", "-c", spec.command]
    if not spec.command:
        raise StartError("the command is empty", infra=False)
    return list(spec.command)


class ProcessExecutor(Executor):
    kind = "process"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.proc_dir = work_dir.parent / "proc"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.proc_dir.mkdir(parents=True, exist_ok=True)
        log.warning(
            "the process executor is not a sandbox: jobs run as user %s with this agent's "
            "privileges, host files and network, and no resource limits",
            getpass.getuser(),
        )
        self._prctl = _load_prctl()
        #: the cgroups this run of the agent made (never reaped as leftovers)
        self._mine: set[Path] = set()
        if os.environ.get(CGROUPS_ENV, "").lower() == "off":
            self.cgroups, why = None, f"{CGROUPS_ENV}=off"
        else:
            self.cgroups, why = JobCgroups.probe()
        if self.cgroups is not None:
            log.info(
                "the process executor runs each job in a cgroup of its own under %s",
                self.cgroups.base,
            )
        else:
            log.warning(
                "the process executor runs jobs without cgroups (%s): a job's processes are "
                "found by process group and environment, which a job can leave",
                why,
            )
        if self._prctl is None:
            log.warning("prctl is unavailable: jobs do not die with the agent")

    async def check(self) -> str | None:
        return None

    async def start(
        self,
        info: AttemptInfo,
        spec: JobSpec,
        mounts: Mounts | None = None,
        *,
        pull_secret: PullSecret | None = None,
    ) -> ProcessExecution:
        # No image is pulled: the image, its pull_policy and pull secret are ignored.
        refused = unsupported(spec)
        if refused is not None:
            raise StartError(refused, infra=False)
        argv = command_argv(spec)
        scratch = self.work_dir / f"{info.job_id}-{info.attempt}"
        scratch.mkdir(parents=True, exist_ok=True)
        cwd = scratch if mounts is None else mounts.workspace.absolute()
        if spec.workdir:
            cwd = Path(spec.workdir)
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = str(scratch)
        env["BERTH_JOB_ID"] = info.job_id
        env["BERTH_ATTEMPT"] = str(info.attempt)
        if mounts is not None:
            env["BERTH_WORKSPACE"] = str(mounts.workspace.absolute())
            env["BERTH_CHECKPOINT"] = str(mounts.checkpoint.absolute())
        env.update(plain_env(spec))
        # After the job's own env: it sees the GPUs it was given and no others.
        env.update(gpus.process_env(info.gpus))
        cgroup = self._new_cgroup(info)
        try:
            try:
                proc = await self._spawn(argv, cwd, env, cgroup)
            except _CannotJoin as e:
                # The host refuses what the probe allowed: run this job, and the next
                # ones, without cgroups.
                assert cgroup is not None
                self._give_up_cgroups(f"a job could not join its cgroup {cgroup.path}: {e}")
                await self._forget(cgroup, None)
                cgroup = None
                proc = await self._spawn(argv, cwd, env, None)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
            await self._forget(cgroup, scratch)
            raise StartError(f"command could not start: {e}", infra=False) from e
        except (OSError, subprocess.SubprocessError) as e:
            await self._forget(cgroup, scratch)
            raise StartError(f"command could not start: {e}", infra=True) from e
        except BaseException:
            await self._forget(cgroup, scratch)
            raise
        record = self.proc_dir / f"{info.job_id}.{info.attempt}.json"
        record.write_bytes(
            codec.dumps(
                {
                    "job_id": info.job_id,
                    "attempt": info.attempt,
                    "node_id": info.node_id,
                    "pid": proc.pid,
                    "create_time": _create_time(proc.pid),
                    "cgroup": None if cgroup is None else str(cgroup.path),
                    "home": env["HOME"],
                }
            )
        )
        return ProcessExecution(proc, info, scratch, record, cgroup, env["HOME"])

    async def adopt(self, node_ids: set[str]) -> list[Execution]:
        """Kill what a previous run left behind; report it as lost."""
        lost: list[Execution] = []
        cgroups: list[JobCgroup] = []
        marks: set[_Mark] = set()
        for record in sorted(self.proc_dir.glob("*.json")):
            try:
                doc = codec.loads(record.read_bytes())
                info = AttemptInfo(
                    str(doc["job_id"]), int(doc["attempt"]), str(doc["node_id"]), 0.0, 0
                )
                pid, created = int(doc["pid"]), doc.get("create_time")
                cgroup_path, home = doc.get("cgroup"), doc.get("home")
            except (OSError, BerthError, KeyError, TypeError, ValueError):
                record.unlink(missing_ok=True)
                continue
            if created is not None and _create_time(pid) == created:
                log.warning(
                    "killing process group %d left by a previous run (job %s)", pid, info.job_id
                )
                _signal_group(pid, signal.SIGKILL)
            if isinstance(cgroup_path, str) and Path(cgroup_path).parent.parent.name == JOBS_DIR:
                cgroups.append(JobCgroup(Path(cgroup_path)))
            elif isinstance(home, str):
                marks.add((info.job_id, str(info.attempt), home))
            scratch = self.work_dir / f"{info.job_id}-{info.attempt}"
            if info.node_id in node_ids:
                lost.append(LostExecution(info, scratch, record))
            else:
                shutil.rmtree(scratch, ignore_errors=True)
                record.unlink(missing_ok=True)
        if self.cgroups is not None:
            for node_id in sorted(node_ids):
                cgroups += self.cgroups.of_node(node_id)
        await self._reap({c.path: c for c in cgroups if c.path not in self._mine}.values())
        if marks:
            await asyncio.to_thread(_kill_marked, marks)
        if self.cgroups is not None:
            for node_id in node_ids:
                self.cgroups.prune(node_id)
        return lost

    # --- helpers ---------------------------------------------------------------------

    def _new_cgroup(self, info: AttemptInfo) -> JobCgroup | None:
        if self.cgroups is None:
            return None
        try:
            cgroup = self.cgroups.create(info.node_id, f"{info.job_id}-{info.attempt}")
        except OSError as e:
            self._give_up_cgroups(f"cannot create a job cgroup: {e}")
            return None
        self._mine.add(cgroup.path)
        return cgroup

    def _give_up_cgroups(self, why: str) -> None:
        log.error("%s; running jobs without cgroups from now on", why)
        self.cgroups = None

    async def _spawn(
        self, argv: list[str], cwd: Path, env: dict[str, str], cgroup: JobCgroup | None
    ) -> asyncio.subprocess.Process:
        """Start the command; in ``cgroup`` if one is given (_CannotJoin if it cannot)."""
        spawn = functools.partial(
            asyncio.create_subprocess_exec,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        if cgroup is None:
            return await spawn(*argv, preexec_fn=_child_setup(os.getpid(), self._prctl))
        try:
            os.close(cgroup.open_procs())
        except OSError as e:
            raise _CannotJoin(str(e)) from e
        # The shell's own lookup of the command would turn a missing one into exit
        # code 127; it is refused here instead, as an exec of its own would be.
        _check_runnable(argv[0], cwd, env.get("PATH", ""))
        procs = str(cgroup.path / "cgroup.procs")
        return await spawn("/bin/sh", "-c", JOIN_CGROUP, procs, *argv)

    async def _forget(self, cgroup: JobCgroup | None, scratch: Path | None) -> None:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if cgroup is not None:
            self._mine.discard(cgroup.path)
            await cgroup.destroy()

    async def _reap(self, cgroups: Iterable[JobCgroup]) -> None:
        for cgroup in cgroups:
            pids = await asyncio.to_thread(cgroup.pids)
            if pids:
                log.warning(
                    "killing %d process(es) left by a previous run in %s", len(pids), cgroup.path
                )
            if not await cgroup.destroy():
                log.error("could not remove the job cgroup %s (still busy)", cgroup.path)


class _CannotJoin(Exception):
    """A job could not be started in its cgroup."""


class ProcessExecution(Execution):
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        info: AttemptInfo,
        scratch: Path,
        record: Path,
        cgroup: JobCgroup | None = None,
        home: str | None = None,
    ) -> None:
        self._proc = proc
        self.info = info
        self.started_at = time.time()
        self._scratch = scratch
        self._record = record
        self._cgroup = cgroup
        self._mark: _Mark | None = None if home is None else (info.job_id, str(info.attempt), home)
        self._exited = asyncio.Event()
        self._sampler = UsageSampler(
            cgroup.pids if cgroup is not None else functools.partial(_group_pids, proc.pid)
        )

    async def logs(self, skip: int = 0) -> AsyncIterator[bytes]:
        stream = self._proc.stdout
        assert stream is not None
        pos = 0
        while True:
            if self._exited.is_set():
                # Children that keep the pipe open must not hold the attempt forever.
                try:
                    chunk = await asyncio.wait_for(stream.read(READ_CHUNK), OUTPUT_DRAIN_S)
                except TimeoutError:
                    return
            else:
                chunk = await stream.read(READ_CHUNK)
            if not chunk:
                return
            start, pos = pos, pos + len(chunk)
            if pos > skip:
                yield chunk[max(0, skip - start) :]

    async def wait(self) -> ExitStatus:
        code = await self._proc.wait()
        self._exited.set()
        # Whatever the job left running goes with it.
        await self._kill_all()
        if code < 0:
            code = 128 - code  # killed by signal N: the shell's 128 + N
        return ExitStatus(exit_code=max(-255, min(255, code)))

    async def stop(self, grace_s: float) -> None:
        if self._proc.returncode is not None:
            return
        await self._signal(signal.SIGCONT)
        await self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace_s)
        except TimeoutError:
            await self._kill_all()

    async def pause(self) -> None:
        await self._signal(signal.SIGSTOP)

    async def usage(self) -> UsageSample | None:
        if self._proc.returncode is not None:
            return None
        return await asyncio.to_thread(self._sampler.sample)

    async def resume(self) -> None:
        await self._signal(signal.SIGCONT)

    async def remove(self) -> None:
        if self._cgroup is not None:
            if not self._cgroup.remove_if_empty() and not await self._cgroup.destroy():
                log.error("could not remove the job cgroup %s (still busy)", self._cgroup.path)
        elif self._proc.returncode is None:
            await self._kill_all()
        _remove_dir(self._scratch)
        self._record.unlink(missing_ok=True)

    async def _signal(self, sig: signal.Signals) -> None:
        if self._cgroup is not None:
            await asyncio.to_thread(self._cgroup.signal, sig)
        else:
            _signal_group(self._proc.pid, sig)

    async def _kill_all(self) -> None:
        if self._cgroup is not None:
            # Most jobs leave nothing behind: one small read tells, on the loop.
            if self._cgroup.populated():
                await asyncio.to_thread(self._cgroup.kill)
            return
        _signal_group(self._proc.pid, signal.SIGKILL)
        if self._mark is not None:
            await asyncio.to_thread(_kill_marked, {self._mark})


class LostExecution(Execution):
    """An attempt whose process died with the previous run of the agent."""

    def __init__(self, info: AttemptInfo, scratch: Path, record: Path) -> None:
        self.info = info
        self._scratch = scratch
        self._record = record

    def logs(self, skip: int = 0) -> AsyncIterator[bytes]:
        return empty_stream()

    async def wait(self) -> ExitStatus:
        return ExitStatus(
            None,
            infra_error=(
                "lost: the agent restarted and the process executor cannot re-adopt a process"
            ),
        )

    async def stop(self, grace_s: float) -> None:
        return None

    async def pause(self) -> None:
        return None

    async def resume(self) -> None:
        return None

    async def remove(self) -> None:
        _remove_dir(self._scratch)
        self._record.unlink(missing_ok=True)


class UsageSampler:
    """CPU and memory of a set of processes, summed (blocking).

    It keeps the psutil Process of each pid it saw, so each one's CPU % is measured
    since the previous sample; a process seen for the first time counts from the next.
    """

    def __init__(self, members: Callable[[], Iterable[int]]) -> None:
        self.members = members
        self._seen: dict[int, psutil.Process] = {}

    def sample(self) -> UsageSample | None:
        cpu = 0.0
        rss = 0
        found = False
        seen: dict[int, psutil.Process] = {}
        for pid in self.members():
            try:
                p = self._seen.get(pid)
                if p is None or not p.is_running():
                    p = psutil.Process(pid)
                with p.oneshot():
                    cpu += p.cpu_percent(interval=None)
                    rss += p.memory_info().rss
            except psutil.Error:
                continue
            seen[pid] = p
            found = True
        self._seen = seen
        if not found:
            return None
        return UsageSample(cpu_percent=cpu, memory_mb=rss / (1024 * 1024))


#: what the executor put in an attempt's environment: job id, attempt, HOME
_Mark = tuple[str, str, str]


def _kill_marked(marks: set[_Mark]) -> None:
    """SIGKILL each process whose environment carries one of ``marks`` (blocking)."""
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            env = p.environ()
            mark = (env.get("BERTH_JOB_ID"), env.get("BERTH_ATTEMPT"), env.get("HOME"))
            if mark in marks:
                log.warning("killing process %d left by job %s", p.pid, mark[0])
                p.kill()
        except psutil.Error:
            continue


def _group_pids(pgid: int) -> list[int]:
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(p.pid) == pgid:
                found.append(p.pid)
    return found


def _child_setup(agent: int, prctl: Callable[..., int] | None) -> Callable[[], None]:
    """What the child does between fork and exec: die with the agent.

    Only system calls: Python code after a fork in a threaded process must not take
    locks another thread may have held.
    """

    def setup() -> None:
        if prctl is not None:
            if prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL)) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
            if os.getppid() != agent:  # the agent died before that took effect
                os.kill(os.getpid(), signal.SIGKILL)

    return setup


def _remove_dir(path: Path) -> None:
    """Remove a directory; one system call when the job left it empty."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _check_runnable(program: str, cwd: Path, path: str) -> None:
    """Raise what exec would for a program that is missing or not executable."""
    if "/" in program:
        where = os.path.join(cwd, program)
        runnable = os.path.isfile(where) and os.access(where, os.X_OK)
    else:
        runnable = shutil.which(program, path=path) is not None
    if not runnable:
        raise FileNotFoundError(errno.ENOENT, "no such executable", program)


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the agent (a forked child must not load libraries)."""
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None

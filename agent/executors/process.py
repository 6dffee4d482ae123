"""The process executor: runs a job's command as a local process group. NOT a sandbox.

For hosts without Docker. The command runs with the agent's user and privileges, sees
the host's files and network, and its resource request is not enforced; the image is
ignored. Each attempt gets its own session and process group (``start_new_session``),
so a timeout or cancel reaches every process it started: SIGTERM to the group, then
SIGKILL after the grace; pause and resume are SIGSTOP and SIGCONT to the group, and
its resource use is the sum over the group (psutil). Stdout and stderr are one stream.
The attempt's workspace is its working directory (unless the job names one) and
``$BERTH_WORKSPACE``; its checkpoint directory is ``$BERTH_CHECKPOINT``.

It cannot honour what only a container gives: a job that asks for a read-only root
filesystem, another ``user``, host ``mounts`` or ``privileged`` mode is refused (it
fails, saying so) rather than run without what it asked for.

A process cannot be re-attached after the agent restarts: leftovers recorded in the
state dir are killed on start and reported as lost (an infrastructure failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil

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

    async def check(self) -> str | None:
        return None

    async def start(
        self, info: AttemptInfo, spec: JobSpec, mounts: Mounts | None = None
    ) -> ProcessExecution:
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
        env.update(spec.env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
            shutil.rmtree(scratch, ignore_errors=True)
            raise StartError(f"command could not start: {e}", infra=False) from e
        except OSError as e:
            shutil.rmtree(scratch, ignore_errors=True)
            raise StartError(f"command could not start: {e}", infra=True) from e
        record = self.proc_dir / f"{info.job_id}.{info.attempt}.json"
        record.write_bytes(
            codec.dumps(
                {
                    "job_id": info.job_id,
                    "attempt": info.attempt,
                    "node_id": info.node_id,
                    "pid": proc.pid,
                    "create_time": _create_time(proc.pid),
                }
            )
        )
        return ProcessExecution(proc, info, scratch, record)

    async def adopt(self, node_ids: set[str]) -> list[Execution]:
        """Kill what a previous run left behind; report it as lost."""
        lost: list[Execution] = []
        for record in sorted(self.proc_dir.glob("*.json")):
            try:
                doc = codec.loads(record.read_bytes())
                info = AttemptInfo(
                    str(doc["job_id"]), int(doc["attempt"]), str(doc["node_id"]), 0.0, 0
                )
                pid, created = int(doc["pid"]), doc.get("create_time")
            except (OSError, BerthError, KeyError, TypeError, ValueError):
                record.unlink(missing_ok=True)
                continue
            if created is not None and _create_time(pid) == created:
                log.warning(
                    "killing process group %d left by a previous run (job %s)", pid, info.job_id
                )
                _signal_group(pid, signal.SIGKILL)
            scratch = self.work_dir / f"{info.job_id}-{info.attempt}"
            if info.node_id in node_ids:
                lost.append(LostExecution(info, scratch, record))
            else:
                shutil.rmtree(scratch, ignore_errors=True)
                record.unlink(missing_ok=True)
        return lost


class ProcessExecution(Execution):
    def __init__(
        self, proc: asyncio.subprocess.Process, info: AttemptInfo, scratch: Path, record: Path
    ) -> None:
        self._proc = proc
        self.info = info
        self.started_at = time.time()
        self._scratch = scratch
        self._record = record
        self._exited = asyncio.Event()
        self._group = GroupSampler(proc.pid)

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
        # Whatever the job left running in its group goes with it.
        _signal_group(self._proc.pid, signal.SIGKILL)
        if code < 0:
            code = 128 - code  # killed by signal N: the shell's 128 + N
        return ExitStatus(exit_code=max(-255, min(255, code)))

    async def stop(self, grace_s: float) -> None:
        if self._proc.returncode is not None:
            return
        _signal_group(self._proc.pid, signal.SIGCONT)
        _signal_group(self._proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), grace_s)
        except TimeoutError:
            _signal_group(self._proc.pid, signal.SIGKILL)

    async def pause(self) -> None:
        _signal_group(self._proc.pid, signal.SIGSTOP)

    async def usage(self) -> UsageSample | None:
        if self._proc.returncode is not None:
            return None
        return await asyncio.to_thread(self._group.sample)

    async def resume(self) -> None:
        _signal_group(self._proc.pid, signal.SIGCONT)

    async def remove(self) -> None:
        if self._proc.returncode is None:
            _signal_group(self._proc.pid, signal.SIGKILL)
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._record.unlink(missing_ok=True)


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
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._record.unlink(missing_ok=True)


class GroupSampler:
    """CPU and memory of the processes of one process group, summed (blocking).

    psutil keeps the Process objects it yields, so each one's CPU % is measured since
    the previous sample; a process seen for the first time counts from the next one.
    """

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid

    def sample(self) -> UsageSample | None:
        cpu = 0.0
        rss = 0
        found = False
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) != self.pgid:
                    continue
                with p.oneshot():
                    cpu += p.cpu_percent(interval=None)
                    rss += p.memory_info().rss
                found = True
            except (ProcessLookupError, psutil.Error):
                continue
        if not found:
            return None
        return UsageSample(cpu_percent=cpu, memory_mb=rss / (1024 * 1024))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None

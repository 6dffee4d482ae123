"""One attempt's lifecycle on this node: start, follow, stop, report, clean up.

A :class:`Runner` refuses an attempt the node's policy does not permit (see
:mod:`agent.policy`), takes a parallel slot, prepares the attempt's workspace (inputs
and the checkpoint to resume from, see :mod:`agent.workspace`), starts the attempt with
the executor, with the values of the secrets its env names and of its image pull secret
(:mod:`agent.registryauth`), or takes over one re-adopted after a restart, ships its
output (the env's secret values masked, see :mod:`agent.secretvalues`), progress and
resource use, uploads its checkpoint every ``checkpoint_interval_s`` and when it is
paused, enforces its timeout (paused time counts, as on the scheduler), obeys
cancel/pause/resume, and when it has exited uploads its last checkpoint (unless it
completed) and its outputs, ships the rest of the output, then delivers the final
report (saved in the state dir until the scheduler acknowledges it), frees the slot and
removes the container and the workspace.

Final states: ``completed`` (exit 0), ``failed`` (non-zero exit, out of memory, could
not start, refused by node policy), ``timed_out``, ``cancelled``. A stale attempt (the
scheduler answered 409 ``stale_attempt``, or told the agent to cancel it) is killed and
its reports dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Literal

from agent.config import (
    DEFAULT_MAX_JOB_DISK_MB,
    DEFAULT_STOP_GRACE_S,
    DISK_CHECK_INTERVAL_S,
    LOG_FLUSH_INTERVAL_S,
    LOG_HEAD_BYTES,
    LOG_TAIL_BYTES,
    PROGRESS_MIN_INTERVAL_S,
    REPORT_TIMEOUT_S,
    USAGE_REPORT_INTERVAL_S,
    USAGE_SAMPLE_INTERVAL_S,
)
from agent.diskuse import quota_exceeded, used_bytes
from agent.executors.base import (
    AttemptInfo,
    Execution,
    Executor,
    ExitStatus,
    Mounts,
    StartError,
)
from agent.link import Link
from agent.logship import LogShipper
from agent.policy import NodePolicy
from agent.progress import LineSplitter, last_progress
from agent.registryauth import pull_secret_of
from agent.reports import Delivery
from agent.secretvalues import LogMasker, MissingSecret, env_secret_values, resolve_env
from agent.state import AgentState
from agent.usage import UsageTracker
from agent.workspace import AttemptFiles, WorkspaceError
from common.errors import BerthError, StaleAttempt
from common.models import JobSpec, Progress, Report

log = logging.getLogger(__name__)

#: seconds to let the output stream close after the attempt exited
OUTPUT_CLOSE_S = 5.0
#: how many times an attempt is paused before its checkpoint is archived unfrozen
FREEZE_TRIES = 3
#: seconds after the start of the first sample of an attempt's resource use
FIRST_USAGE_SAMPLE_S = 0.2
#: buffered output past which reading pauses until some is shipped
MAX_BUFFERED = 8 * 1024 * 1024

Key = tuple[str, int]
#: why the agent stopped an attempt: cancelled, timed out, or failed (a limit it broke)
StopKind = Literal["cancelled", "timed_out", "failed"]
#: said where the agent stops shipping an attempt's output ...
OUTPUT_CUT_MARKER = (
    b"\n[berth: output past %d MiB is not shipped; its last %d KiB follow when the job ends]\n"
    % (LOG_HEAD_BYTES // (1024 * 1024), LOG_TAIL_BYTES // 1024)
)
#: ... and before the end of it, after the exit; the executor read it again from
#: its own log files, so it may repeat some of what came before
OUTPUT_TAIL_MARKER = b"\n[berth: output was dropped here; the last %d bytes of it follow]\n"
#: ... or, where the agent read it all, how much it dropped
OUTPUT_DROPPED_MARKER = b"\n[berth: %d bytes of output were dropped here; the last %d follow]\n"


class Slots:
    """The node's parallel slots: ``acquire`` waits for one, ``take`` never waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used < self.limit)
            self.used += 1

    def take(self) -> None:
        """For attempts already running (re-adopted): counted even past the limit."""
        self.used += 1

    async def release(self) -> None:
        async with self._cond:
            self.used -= 1
            self._cond.notify()


def final_report(
    attempt: int,
    status: ExitStatus,
    *,
    stopped_as: StopKind | None,
    reason: str = "",
    timeout_s: float = 0.0,
    memory_mb: int = 0,
) -> Report:
    """The final report of an attempt that ran and exited (pure)."""
    code = status.exit_code
    if stopped_as == "cancelled":
        return Report(attempt, "cancelled", exit_code=code, error=reason or "cancelled")
    if stopped_as == "failed":
        return Report(attempt, "failed", exit_code=code, error=reason or "failed")
    if stopped_as == "timed_out":
        return Report(
            attempt, "timed_out", exit_code=code, error=f"timed out after {timeout_s:g} s"
        )
    if status.infra_error is not None:
        return Report(
            attempt,
            "failed",
            exit_code=code,
            error=status.infra_error,
            infra_failure=True,
            lost=True,
        )
    if status.oom_killed:
        limit = f" (limit {memory_mb} MiB)" if memory_mb else ""
        return Report(
            attempt, "failed", exit_code=code, error=f"out of memory{limit}", oom_killed=True
        )
    if code == 0:
        return Report(attempt, "completed", exit_code=0)
    return Report(attempt, "failed", exit_code=code, error=f"exit code {code}")


class Runner:
    """Runs one attempt; ``run()`` returns when it is over and reported."""

    def __init__(
        self,
        info: AttemptInfo,
        spec: JobSpec | None,
        *,
        executor: Executor,
        link: Link,
        state: AgentState,
        slots: Slots,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        execution: Execution | None = None,
        files: AttemptFiles | None = None,
        clock: Callable[[], float] = time.time,
        policy: NodePolicy | None = None,
        max_disk_mb: int = DEFAULT_MAX_JOB_DISK_MB,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.info = info
        self.spec = spec
        #: the values of the secrets the spec names, by name (from the assignment)
        self._secrets = dict(secrets or {})
        #: masks those in the job's env in its output and reports (agent.secretvalues);
        #: a re-adopted attempt's are found in its environment again
        self._masker = LogMasker(execution.masked if execution is not None else ())
        self.key: Key = (info.job_id, info.attempt)
        self.execution = execution
        self.adopted = execution is not None
        self._executor = executor
        self._link = link
        self._state = state
        self._slots = slots
        self._grace = stop_grace_s
        self._clock = clock
        self._policy = policy or NodePolicy()
        self._max_disk_mb = max_disk_mb
        self._stop = asyncio.Event()
        self._stopped_as: StopKind | None = None
        self._reason = ""
        self._stop_sent = False
        self._fenced = False
        self._holds_slot = False
        self._paused_at: float | None = None
        if execution is not None and execution.paused:
            self._paused_at = clock()
        #: pause and resume one at a time (the scheduler repeats its commands)
        self._control = asyncio.Lock()
        #: paused by the agent itself while its checkpoint is archived
        self._frozen_now = False
        self.files = files
        self._usage = UsageTracker(USAGE_REPORT_INTERVAL_S)
        self._side_tasks: set[asyncio.Task[object]] = set()
        self._progress: Progress | None = None
        self._progress_sent_at = 0.0
        self._flush_now = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.shipper = LogShipper(self._append)
        #: bytes of output read; past LOG_HEAD_BYTES only the end is kept
        self._read = 0
        #: the end of the output past the head, where the executor cannot read it again
        self._tail = bytearray()
        #: the final report, once known
        self.result: Report | None = None
        #: set once the attempt has exited (or never started); only delivery remains
        self.exited = asyncio.Event()

    # --- commands ----------------------------------------------------------------------

    def cancel(self, reason: str) -> None:
        """Stop the attempt (SIGTERM, SIGKILL after the grace) and report it cancelled."""
        if self._stopped_as is None:
            self._stopped_as = "cancelled"
            self._reason = reason
        self._stop.set()

    def fail(self, reason: str) -> None:
        """Stop the attempt and report it failed with ``reason`` (a limit it broke)."""
        if self._stopped_as is None:
            self._stopped_as = "failed"
            self._reason = reason
        self._stop.set()

    def fence(self, reason: str) -> None:
        """The attempt is stale: kill it and send nothing more about it."""
        if not self._fenced:
            log.info(
                "attempt %d of %s is stale (%s): killing it",
                self.info.attempt,
                self.info.job_id,
                reason,
            )
        self._fenced = True
        self.cancel(reason)

    async def pause(self) -> None:
        """Freeze the attempt, then upload its checkpoint; a no-op when it is paused."""
        async with self._control:
            if self.execution is None or self._paused_at is not None or self._stop.is_set():
                return
            await self.execution.pause()
            self._paused_at = self._clock()
            log.info("attempt %d of %s paused", self.info.attempt, self.info.job_id)
        if self.files is not None:
            self._side_task(self.files.save_checkpoint("paused", self._frozen))

    async def resume(self) -> None:
        async with self._control:
            if self.execution is None or self._paused_at is None or self._stop.is_set():
                return
            await self.execution.resume()
            self._paused_at = None
            log.info("attempt %d of %s resumed", self.info.attempt, self.info.job_id)

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    @contextlib.asynccontextmanager
    async def _frozen(self) -> AsyncIterator[None]:
        """Hold the attempt still while its checkpoint is archived: paused (docker
        pause, SIGSTOP) unless it is paused already, so that it cannot change
        /checkpoint meanwhile; pause and resume commands wait until it is done."""
        async with self._control:
            execution = self.execution
            if execution is not None and self._paused_at is None and not self._stop.is_set():
                # The runtime's freezer may give up on busy tasks ("unable to freeze"):
                # tried again; the attempt may also have just exited. The archive does
                # not rely on the freeze for safety, only for a consistent checkpoint.
                for tries_left in reversed(range(FREEZE_TRIES)):
                    try:
                        await execution.pause()
                        self._frozen_now = True
                        break
                    except Exception as e:
                        if not tries_left:
                            log.info(
                                "attempt %d of %s not frozen: %s",
                                self.info.attempt,
                                self.info.job_id,
                                e,
                            )
            try:
                yield
            finally:
                if self._frozen_now and execution is not None:
                    self._frozen_now = False
                    try:
                        await execution.resume()
                    except Exception as e:
                        log.info(
                            "attempt %d of %s not thawed: %s",
                            self.info.attempt,
                            self.info.job_id,
                            e,
                        )

    def _side_task(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    @property
    def fenced(self) -> bool:
        return self._fenced

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("attempt %d of %s: runner failed", self.info.attempt, self.info.job_id)
            await self._end_broken(e)
        finally:
            self.exited.set()
            await self._release_slot()

    async def _end_broken(self, error: Exception) -> None:
        """The runner itself broke: stop what it started and report the attempt failed
        at once, instead of leaving it to the scheduler's missing-attempt rule."""
        self.exited.set()
        execution = self.execution
        try:
            if execution is not None:
                await execution.stop(0)
                await execution.remove()
            if self.files is not None:
                await self.files.remove()
        except Exception as e:
            log.warning(
                "attempt %d of %s not cleaned up: %s", self.info.attempt, self.info.job_id, e
            )
        report = self.result or Report(
            self.info.attempt,
            "failed",
            error=f"the agent failed running it: {type(error).__name__}: {error}"[:4000],
            infra_failure=True,
        )
        try:
            await self._conclude(report)
        except Exception:
            log.exception("attempt %d of %s: not reported", self.info.attempt, self.info.job_id)

    async def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            await self._slots.release()

    async def _run(self) -> None:
        job, attempt = self.key
        if self.execution is None:
            assert self.spec is not None
            try:
                self._masker = LogMasker(env_secret_values(self.spec, self._secrets))
                pull_secret = pull_secret_of(self.spec, self._secrets)
                self.spec = resolve_env(self.spec, self._secrets)
            except MissingSecret as e:
                await self._end_unstarted(Report(attempt, "failed", error=str(e)))
                return
            refused = self._policy.refusal(self.spec)
            if refused is not None:
                # Before a slot, a workspace or a container: nothing is made for it.
                log.warning("attempt %d of %s: %s", attempt, job, refused)
                await self._end_unstarted(Report(attempt, "failed", error=refused))
                return
            acquired = await self._acquire_slot()
            self._holds_slot = True
            if not acquired:
                self.exited.set()
                await self._conclude(
                    Report(attempt, "cancelled", error=self._reason or "cancelled")
                )
                return
            assert self.spec is not None
            try:
                mounts = await self._prepare(self.spec)
            except WorkspaceError as e:
                log.warning("attempt %d of %s could not start: %s", attempt, job, e.message)
                await self._end_unstarted(
                    Report(attempt, "failed", error=e.message[:4000], infra_failure=e.infra)
                )
                return
            if self._stop.is_set():
                await self._end_unstarted(
                    Report(attempt, "cancelled", error=self._reason or "cancelled")
                )
                return
            try:
                self.execution = await self._executor.start(
                    self.info, self.spec, mounts, pull_secret=pull_secret
                )
            except StartError as e:
                log.warning("attempt %d of %s could not start: %s", attempt, job, e.message)
                await self._end_unstarted(
                    Report(attempt, "failed", error=e.message[:4000], infra_failure=e.infra)
                )
                return
            log.info("attempt %d of %s started", attempt, job)
        else:
            self._slots.take()
            self._holds_slot = True
            log.info("attempt %d of %s re-adopted", attempt, job)
        execution = self.execution
        pump = asyncio.create_task(self._pump(execution))
        helpers = [
            asyncio.create_task(self._report_running()),
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self._usage_loop(execution)),
            asyncio.create_task(self._disk_loop(execution)),
        ]
        interval = self.info.checkpoint_interval_s
        if interval and self.files is not None:
            helpers.append(asyncio.create_task(self._checkpoint_loop(self.files, interval)))
        try:
            status = await self._supervise(execution)
            try:
                await asyncio.wait_for(asyncio.shield(pump), OUTPUT_CLOSE_S)
            except TimeoutError:
                log.warning("output of %s did not close after exit; shipping what came", job)
        finally:
            for task in (pump, *helpers):
                task.cancel()
            await asyncio.gather(pump, *helpers, return_exceptions=True)
        self.exited.set()
        await self._keep_tail(execution)
        # The output has ended: what the masker held back goes out too.
        self.shipper.write(self._masker.flush())
        report = final_report(
            attempt,
            status,
            stopped_as=self._stopped_as if self._stop_sent else None,
            reason=self._reason,
            timeout_s=self.info.timeout_s,
            memory_mb=self.info.memory_mb,
        )
        if not self._stop_sent and self._stopped_as == "cancelled" and not self._fenced:
            log.info("attempt %d of %s ended before the cancel reached it", attempt, job)
        report = await self._save_files(report)
        await self._conclude(report, ship_logs=True)
        await self._release_slot()  # before the removal: the next attempt may start
        await self._remove(execution)

    async def _prepare(self, spec: JobSpec) -> Mounts | None:
        """The attempt's workspace with its inputs and checkpoint; None without one, or
        when the attempt was cancelled meanwhile (``_stop`` is then set)."""
        if self.files is None:
            return None
        preparing = asyncio.create_task(self.files.prepare(spec.inputs))
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({preparing, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not preparing.done():
            preparing.cancel()
            with contextlib.suppress(asyncio.CancelledError, WorkspaceError):
                await preparing
            return None
        return preparing.result()

    async def _end_unstarted(self, report: Report) -> None:
        """Report an attempt that never ran, and drop its workspace."""
        self.exited.set()
        if self.files is not None:
            await self.files.remove()
        await self._conclude(report)

    async def _save_files(self, report: Report) -> Report:
        """Upload the last checkpoint (unless the attempt completed) and the outputs;
        the report carries the outputs' digest and the attempt's resource use."""
        files = self.files
        if self._usage.current is not None:
            report.usage = self._usage.current
            # The last samples (taken since the last usage report) go with the end.
            report.samples = self._usage.take_samples() or None
        if files is None or not files.ws.exists():
            return report
        for task in list(self._side_tasks):
            task.cancel()
        if report.state != "completed":
            await files.save_checkpoint("stale" if self._fenced else str(report.state))
        if self._fenced:
            return report
        digest, problem = await files.save_outputs()
        report.outputs = digest
        if problem is None:
            return report
        log.warning("attempt %d of %s: %s", report.attempt, self.info.job_id, problem)
        if report.state == "completed":
            # The job asked for its outputs to be kept; without them it did not succeed.
            return Report(
                report.attempt,
                "failed",
                exit_code=report.exit_code,
                error=problem[:4000],
                usage=report.usage,
                samples=report.samples,
            )
        report.error = f"{report.error}; {problem}"[:4000] if report.error else problem[:4000]
        return report

    async def _acquire_slot(self) -> bool:
        """Wait for a free slot; False if the attempt was cancelled meanwhile."""
        slot = asyncio.create_task(self._slots.acquire())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({slot, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if slot.done() and not slot.cancelled():
            # When cancelled meanwhile it still holds the slot; the caller releases it.
            return not self._stop.is_set()
        slot.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await slot
        if slot.cancelled():
            self._slots.take()  # keep release() balanced
        return False

    async def _supervise(self, execution: Execution) -> ExitStatus:
        """Wait for the exit; stop the attempt on cancel or at its timeout."""
        waiter = asyncio.create_task(execution.wait())
        stopper: asyncio.Task[None] | None = None
        try:
            while True:
                if stopper is None:
                    stop_wait = asyncio.create_task(self._stop.wait())
                    remaining = self._time_left()
                    await asyncio.wait(
                        {waiter, stop_wait},
                        timeout=None if remaining is None else max(0.0, remaining),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    stop_wait.cancel()
                    if waiter.done():
                        break
                    if not self._stop.is_set():
                        left = self._time_left()
                        if left is None or left > 0:
                            continue
                        self._stopped_as = "timed_out"
                        log.info("attempt %d of %s timed out", self.info.attempt, self.info.job_id)
                    self._stop_sent = True
                    stopper = asyncio.create_task(self._stop_execution(execution))
                else:
                    await asyncio.wait({waiter}, timeout=self._grace + 10)
                    if waiter.done():
                        break
                    if stopper.done():
                        stopper = asyncio.create_task(self._stop_execution(execution))
            try:
                return waiter.result()
            except Exception as e:
                log.exception("lost track of attempt %d of %s", self.info.attempt, self.info.job_id)
                return ExitStatus(None, infra_error=f"lost track of the attempt: {e}")
        finally:
            if not waiter.done():
                waiter.cancel()
            if stopper is not None and not stopper.done():
                stopper.cancel()

    async def _stop_execution(self, execution: Execution) -> None:
        try:
            if self._paused_at is not None or self._frozen_now:
                # A frozen attempt gets its SIGTERM and grace too (docker would only
                # kill a paused container).
                with contextlib.suppress(Exception):
                    await execution.resume()
                self._paused_at = None
                self._frozen_now = False
            await execution.stop(self._grace)
        except Exception as e:
            log.warning(
                "stopping attempt %d of %s failed: %s", self.info.attempt, self.info.job_id, e
            )

    def _time_left(self) -> float | None:
        """Seconds until the timeout, None if none.

        Paused time counts, as it does on the scheduler: the timeout bounds how long
        the attempt holds its node's resources, and a paused attempt holds them.
        """
        if self.info.timeout_s <= 0:
            return None
        started = self.execution.started_at if self.execution else None
        if started is None:
            started = self._clock()
            if self.execution is not None:
                self.execution.started_at = started
        return started + self.info.timeout_s - self._clock()

    # --- output ------------------------------------------------------------------------

    async def _append(self, offset: int, data: bytes) -> int:
        return await self._link.append_logs(self.info.job_id, self.info.attempt, offset, data)

    async def _pump(self, execution: Execution) -> None:
        """Read the attempt's output into the shipper; note progress lines."""
        if self.adopted:
            # Resume from what the scheduler already has.
            try:
                await self._link.retrying(self.shipper.sync)
            except StaleAttempt:
                self.fence("the scheduler refused its log")
                return
            except BerthError as e:
                log.warning("could not learn the log offset of %s: %s", self.info.job_id, e.message)
        lines = LineSplitter()
        stream = execution.logs()
        try:
            async for chunk in stream:
                room = LOG_HEAD_BYTES - self._read
                self._read += len(chunk)
                if room <= 0 or len(chunk) >= room:
                    self._tail += chunk[max(0, room) :]
                    del self._tail[:-LOG_TAIL_BYTES]
                    chunk = chunk[: max(0, room)]
                if chunk:
                    await self._ship(lines, chunk)
                if room > 0 and self._read >= LOG_HEAD_BYTES:
                    # The head is complete: past it only the end is kept, so a flood of
                    # output costs neither the scheduler nor this node more.
                    await self._ship(lines, OUTPUT_CUT_MARKER)
                    if execution.keeps_output:
                        log.info(
                            "stopped reading the output of %s at %d bytes; its end is read "
                            "when it exits",
                            self.info.job_id,
                            self._read,
                        )
                        return
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # stops the executor's reader (a thread, a connection)

    async def _ship(self, lines: LineSplitter, data: bytes) -> None:
        fresh = self.shipper.write(self._masker.feed(data))
        progress = last_progress(lines, fresh) if fresh else None
        if progress is not None:
            self._progress = progress
        if self.shipper.should_flush() or progress is not None:
            self._flush_now.set()
        if self.shipper.pending > MAX_BUFFERED:
            self._drained.clear()
            await self._drained.wait()

    async def _keep_tail(self, execution: Execution) -> None:
        """After the exit, add the end of an output cut at its head, after a marker."""
        if self._read < LOG_HEAD_BYTES:
            return  # nothing was cut
        if execution.keeps_output:
            tail = await execution.tail(LOG_TAIL_BYTES) or b""
            self.shipper.write(self._masker.feed(OUTPUT_TAIL_MARKER % len(tail) + tail))
        else:
            tail = bytes(self._tail)
            dropped = self._read - LOG_HEAD_BYTES - len(tail)
            self.shipper.write(
                self._masker.feed(OUTPUT_DROPPED_MARKER % (dropped, len(tail)) + tail)
            )

    async def _disk_loop(self, execution: Execution) -> None:
        """Fail the attempt once what it wrote to this node's disk (its workspace,
        checkpoint and writable layer) is past the per-job quota (agent.diskuse)."""
        roots: list[str] = []
        if self.files is not None:
            mounts = self.files.mounts
            roots = [str(mounts.workspace), str(mounts.checkpoint)]
        layers: list[str] = []
        while True:
            await asyncio.sleep(DISK_CHECK_INTERVAL_S)
            if not layers:
                layers = await execution.disk_paths()
            used = await asyncio.to_thread(used_bytes, [*roots, *layers])
            reason = quota_exceeded(used, self._max_disk_mb)
            if reason is not None:
                log.warning("attempt %d of %s: %s", self.info.attempt, self.info.job_id, reason)
                self.fail(reason)
                return

    async def _flush_loop(self) -> None:
        """Ship output every LOG_FLUSH_INTERVAL_S, or at once when enough is buffered."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), LOG_FLUSH_INTERVAL_S)
            self._flush_now.clear()
            if not self._link.registered.is_set():
                continue
            try:
                if self.shipper.pending:
                    await self.shipper.flush()
                    self._drained.set()
                await self._send_progress()
            except StaleAttempt:
                self.fence("the scheduler refused its log")
                return
            except BerthError as e:
                log.debug("log shipping of %s deferred: %s", self.info.job_id, e.message)

    async def _send_progress(self) -> None:
        progress = self._progress
        now = self._clock()
        if progress is None or now - self._progress_sent_at < PROGRESS_MIN_INTERVAL_S:
            if progress is not None:
                self._flush_now.set()  # try again on the next round
            return
        self._progress = None
        self._progress_sent_at = now
        await self._link.client.report(
            self._link.node_id,
            self.info.job_id,
            Report(self.info.attempt, None, progress=progress),
            timeout=REPORT_TIMEOUT_S,
        )

    async def _usage_loop(self, execution: Execution) -> None:
        """Sample the attempt's resource use; report it now and then (progress-less).

        The first sample comes after a short while: an attempt over by then costs no
        walk of the host's processes."""
        await asyncio.sleep(FIRST_USAGE_SAMPLE_S)
        while True:
            try:
                sample = await execution.usage()
            except Exception as e:
                log.debug("usage of %s could not be sampled: %s", self.info.job_id, e)
                sample = None
            if sample is not None:
                usage = self._usage.add(sample)
                now = self._clock()
                if self._usage.due(now) and self._link.registered.is_set() and not self._fenced:
                    self._usage.sent(now)
                    samples = self._usage.take_samples()
                    try:
                        await self._link.client.report(
                            self._link.node_id,
                            self.info.job_id,
                            Report(self.info.attempt, None, usage=usage, samples=samples),
                            timeout=REPORT_TIMEOUT_S,
                        )
                    except BerthError:
                        self._usage.unsent(samples)
            await asyncio.sleep(USAGE_SAMPLE_INTERVAL_S)

    async def _checkpoint_loop(self, files: AttemptFiles, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self._stop.is_set():
                await files.save_checkpoint(f"every {interval:g} s", self._frozen)

    async def _report_running(self) -> None:
        # Also for a re-adopted attempt: the agent may have died before reporting it.
        try:
            outcome = await self._link.deliver(
                self.info.job_id, Report(self.info.attempt, "running")
            )
        except asyncio.CancelledError:
            raise
        if outcome is Delivery.STALE:
            self.fence("the scheduler refused its running report")

    # --- the end -----------------------------------------------------------------------

    async def _conclude(self, report: Report, *, ship_logs: bool = False) -> None:
        """Save the final report, ship the remaining output, deliver the report."""
        job = self.info.job_id
        if report.error:
            report.error = self._masker.mask_text(report.error)
        self.result = report
        if self._fenced:
            self._state.drop_report(job, report.attempt)
            return
        # On the loop: a small write and its fsync cost less than a hop to a thread.
        self._state.save_report(job, report)
        if ship_logs and self.shipper.pending:
            try:
                await self._link.retrying(self.shipper.flush)
            except StaleAttempt:
                self._fenced = True
            except BerthError as e:
                log.warning("the rest of the output of %s was refused: %s", job, e.message)
        if not self._fenced:
            if self._progress is not None:
                with contextlib.suppress(BerthError):
                    self._progress_sent_at = 0.0
                    await self._send_progress()
            outcome = await self._link.deliver(job, report)
            if outcome is Delivery.STALE:
                self._fenced = True
            elif outcome is Delivery.OK:
                log.info(
                    "attempt %d of %s: %s%s",
                    report.attempt,
                    job,
                    report.state,
                    f" ({report.error})" if report.error else "",
                )
        self._state.drop_report(job, report.attempt)

    async def _remove(self, execution: Execution) -> None:
        try:
            await execution.remove()
        except Exception as e:
            log.warning(
                "could not clean up attempt %d of %s: %s", self.info.attempt, self.info.job_id, e
            )
        if self.files is not None:
            await self.files.remove()

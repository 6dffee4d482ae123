"""The agent daemon: register, heartbeat, long-poll assignments, run them, shut down.

The daemon is a thin loop over small pieces: :mod:`agent.metrics` for capacity and
live metrics, :mod:`agent.runner` for one attempt's lifecycle, :mod:`agent.link` for
calls that retry while the scheduler is away, :mod:`agent.state` for what must survive
a restart, :mod:`agent.exporter` for its own Prometheus metrics (served with
``--metrics-listen``). Its tasks:

- heartbeat: at the interval the scheduler gives, send metrics and the attempts this
  node holds (saying which are paused); obey the ``cancel``/``pause``/``resume``
  commands of the reply (repeated by the scheduler until a heartbeat shows them done);
- assignments: long-poll for new attempts and start a runner for each (deduplicated by
  job and attempt), at most ``max_parallel`` running at once;
- registration: register again whenever the scheduler stops knowing this node.

On start it re-adopts the containers labelled for this node (their output resumes at
the scheduler's offset; their exit is reported once), removes the workspaces of
attempts it no longer has, and resends the final reports saved in its state dir.
Attempts the scheduler no longer wants are cancelled by the heartbeat reply or refused
as stale, and then killed and removed.

The first SIGTERM (or SIGINT) drains: no new assignments, running attempts finish and
are reported, then the agent exits. A second one cancels running attempts, reports
them cancelled and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from agent import gpus, metrics
from agent.config import (
    HEARTBEAT_TIMEOUT_S,
    RETRY_BASE_S,
    RETRY_MAX_S,
    SHUTDOWN_DELIVERY_S,
    AgentConfig,
)
from agent.executors.base import AttemptInfo, Execution, Executor
from agent.exporter import AgentFigures, AgentMetrics, TimedStarts
from agent.link import Link
from agent.policy import NodePolicy
from agent.reports import Delivery
from agent.runner import Key, Runner, Slots
from agent.secretvalues import secret_env_names
from agent.state import AgentState, NodeIdentity
from agent.workspace import AttemptFiles, Workspaces
from common import __version__
from common.client import Backoff, BerthClient
from common.errors import BerthError, Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from common.models import (
    Assignment,
    Command,
    HeartbeatRequest,
    JobSpec,
    RegisterRequest,
    Report,
    RunningAttempt,
)

log = logging.getLogger(__name__)

#: finished attempts remembered so that a repeated assignment is not run twice
FINISHED_MEMORY = 10_000


class FatalError(Exception):
    """The agent cannot work with this configuration (for example a wrong join token)."""


class Agent:
    """One agent daemon; ``await Agent(config, executor).run()``."""

    def __init__(
        self, config: AgentConfig, executor: Executor, offered: gpus.Gpus | None = None
    ) -> None:
        self.config = config
        self.executor = executor
        #: the GPUs this agent offers (``--gpus``; agent.gpus.discover)
        self.gpus = offered or gpus.Gpus()
        self.state = AgentState(config.state_dir)
        self.slots = Slots(config.max_parallel)
        self.policy = NodePolicy(config.allow)
        self.workspaces = Workspaces(
            config.workspaces_dir,
            max_bytes=config.max_archive_bytes,
            max_members=config.max_archive_members,
        )
        self.runners: dict[Key, Runner] = {}
        self._runner_tasks: dict[Key, asyncio.Task[None]] = {}
        #: final reports saved by a previous run whose attempt has no runner now
        self._orphans: dict[Key, asyncio.Task[None]] = {}
        self._finished: OrderedDict[Key, None] = OrderedDict()
        self._executor_error: str | None = None
        self._signals = 0
        self._drain = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._registrations = 0
        self._adopted = False
        self._previous: NodeIdentity | None = None
        self.link: Link | None = None
        self.metrics = AgentMetrics(self.figures)
        #: what runners start attempts with: the executor, its starts timed
        self._timed = TimedStarts(executor, self.metrics)

    def figures(self) -> AgentFigures:
        """What this agent is doing now, for its metrics."""
        runners = list(self.runners.values())
        link = self.link
        return AgentFigures(
            name=self.config.name,
            executor=self.executor.kind,
            running=sum(1 for r in runners if r.execution is not None and not r.exited.is_set()),
            attempts=len(runners),
            slots=self.slots.limit,
            slots_used=self.slots.used,
            unshipped_log_bytes=sum(r.shipper.pending for r in runners),
            log_ship_lag_s=max((r.shipper.lag_s() for r in runners), default=0.0),
            registered=link is not None and link.registered.is_set(),
            reachable=link is not None and link.reachable,
            draining=self._drain.is_set(),
            executor_broken=self._executor_error is not None,
            gpus=len(self.gpus.devices),
            reports_dir=self.state.reports_dir,
        )

    # --- the main loop -----------------------------------------------------------------

    async def run(self) -> int:
        """Run until drained or stopped; returns the process exit code."""
        self.state.prepare()
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        metrics.prime()
        self._install_signals()
        exporter = None
        if self.config.metrics_listen is not None:
            host, port = self.config.metrics_listen
            try:
                exporter = await self.metrics.serve(host, port)
            except OSError as e:
                log.error("cannot serve metrics on %s:%d: %s", host, port, e)
                return 2
        try:
            return await self._run()
        finally:
            if exporter is not None:
                await exporter.cleanup()

    async def _run(self) -> int:
        async with BerthClient(self.config.schedulers, None, ca_file=self.config.ca_file) as client:
            link = self.link = Link(client)
            link.on_commands = self._obey_all
            previous = self.state.load_identity()
            try:
                registered = await self._until_drain(self._register())
            except FatalError as e:
                log.error("%s", e)
                return 2
            if not registered:
                return 0
            await self._adopt(previous)
            self._resume_pending_reports()
            background = [
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                asyncio.create_task(self._registration_loop(), name="registration"),
                asyncio.create_task(self._health_loop(), name="health"),
            ]
            poller = asyncio.create_task(self._poll_loop(), name="assignments")
            await self._drain.wait()
            poller.cancel()
            await self._shutdown()
            for task in [*background, poller]:
                task.cancel()
            await asyncio.gather(*background, poller, return_exceptions=True)
        await self.executor.close()
        log.info("agent stopped")
        return 0

    async def _until_drain(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` unless a shutdown signal comes first; True if it finished."""
        task = asyncio.create_task(coro)
        drain = asyncio.create_task(self._drain.wait())
        await asyncio.wait({task, drain}, return_when=asyncio.FIRST_COMPLETED)
        drain.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    def request_stop(self) -> None:
        """First call: drain. Second call: cancel running attempts and exit."""
        self._signals += 1
        if self._signals == 1:
            log.info("draining: taking no new jobs, finishing %d running", len(self.runners))
            self._drain.set()
            self._beat_now.set()
        else:
            log.info("stopping: cancelling %d running jobs", len(self.runners))
            self._hard_stop.set()
            for runner in list(self.runners.values()):
                runner.cancel("the agent is shutting down")

    async def _shutdown(self) -> None:
        """Wait for running attempts to exit, then (bounded) for their results to go out."""
        hard = asyncio.create_task(self._hard_stop.wait())
        while self.runners and not all(r.exited.is_set() for r in self.runners.values()):
            waits = [asyncio.create_task(r.exited.wait()) for r in self.runners.values()]
            await asyncio.wait({*waits, hard}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if hard.done():
                break
        if hard.done():
            # Cancelled attempts still need their grace to stop.
            exits = [asyncio.create_task(r.exited.wait()) for r in self.runners.values()]
            if exits:
                await asyncio.wait(exits, timeout=self.config.stop_grace_s + 10)
                for w in exits:
                    w.cancel()
        hard.cancel()
        pending = [*self._runner_tasks.values(), *self._orphans.values()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=SHUTDOWN_DELIVERY_S)
            if late:
                log.warning(
                    "%d results could not be delivered; they are kept in %s for the next start",
                    len(late),
                    self.state.reports_dir,
                )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # --- registration ------------------------------------------------------------------

    def register_request(self) -> RegisterRequest:
        cfg = self.config
        capacity = metrics.host_capacity()
        capacity.gpus = len(self.gpus.devices)
        return RegisterRequest(
            name=cfg.name,
            capacity=capacity,
            hostname=socket.gethostname(),
            labels=dict(cfg.labels),
            reserved=metrics.reserved(cfg.reserve_cpu, cfg.reserve_memory_mb),
            max_parallel=cfg.max_parallel,
            executor="process" if self.executor.kind == "process" else "docker",
            version=__version__,
            allow=list(self.policy.allow),
            devices=list(self.gpus.devices),
        )

    async def _register(self) -> None:
        link = self._link()
        backoff = Backoff(RETRY_BASE_S, RETRY_MAX_S)
        req = self.register_request()
        # A registered name is this agent's only with the node token it was given.
        req.node_token = self._held_token()
        while True:
            try:
                reply = await link.client.register(req, join_token=self.config.join_token)
                break
            except (Unauthorized, Forbidden) as e:
                raise FatalError(f"the scheduler refused the join token: {e.message}") from e
            except Conflict as e:
                raise FatalError(f"the scheduler refused the registration: {e.message}") from e
            except InvalidRequest as e:
                raise FatalError(f"the scheduler refused the registration: {e.message}") from e
            except BerthError as e:
                link.note_reachable(False, e.message)
                await asyncio.sleep(backoff.next())
        link.note_reachable(True)
        link.heartbeat_interval_s = reply.heartbeat_interval_s
        link.assignment_wait_s = reply.assignment_wait_s
        link.set_identity(reply.node_id, reply.node_token)
        self._registrations += 1
        self.state.save_identity(NodeIdentity(self.config.name, reply.node_id, reply.node_token))
        log.info(
            "registered as %s (node %s, %s executor, %d parallel, %s, allows %s)",
            self.config.name,
            reply.node_id,
            self.executor.kind,
            self.config.max_parallel,
            f"GPUs {','.join(str(d.index) for d in self.gpus.devices)}"
            if self.gpus.devices
            else "no GPUs",
            ", ".join(self.policy.allow) or "nothing beyond the sandbox",
        )

    def _held_token(self) -> str | None:
        """The node token this agent holds for its name: the one it acts with now, or
        the one a previous run saved in the state dir."""
        if self.link is not None and self.link.client.token:
            return self.link.client.token
        saved = self.state.load_identity()
        return saved.node_token if saved is not None and saved.name == self.config.name else None

    async def _registration_loop(self) -> None:
        link = self._link()
        while True:
            await link.reregister.wait()
            try:
                await self._register()
            except FatalError as e:
                log.error("%s; stopping", e)
                self.request_stop()
                self.request_stop()
                return

    def _link(self) -> Link:
        assert self.link is not None
        return self.link

    # --- re-adoption and leftovers -------------------------------------------------------

    async def _adopt(self, previous: NodeIdentity | None) -> None:
        """Take over what a previous run left; retried by the health loop if it fails."""
        link = self._link()
        self._previous = previous
        node_ids = {link.node_id}
        if previous is not None:
            node_ids.add(previous.node_id)
        try:
            found = await self.executor.adopt(node_ids)
        except Exception as e:
            log.error("could not look for attempts of a previous run (will retry): %s", e)
            return
        self._adopted = True
        for execution in found:
            info = execution.info
            if info.node_id != link.node_id:
                log.info(
                    "removing %s/%d of the former node %s", info.job_id, info.attempt, info.node_id
                )
                await _discard(execution)
                continue
            if (info.job_id, info.attempt) in self.runners:
                continue
            self._spawn(self._new_runner(info, None, execution))
        leftovers = await asyncio.to_thread(self.workspaces.leftovers, set(self.runners))
        for path in leftovers:
            log.info("removing the workspace %s of an attempt this node no longer runs", path)
            await asyncio.to_thread(shutil.rmtree, path, True)

    def _resume_pending_reports(self) -> None:
        for job_id, report in self.state.pending_reports():
            key = (job_id, report.attempt)
            if key in self.runners or key in self._orphans:
                continue
            task = asyncio.create_task(self._deliver_orphan(job_id, report))
            self._orphans[key] = task
            task.add_done_callback(functools.partial(self._orphan_done, key))

    async def _deliver_orphan(self, job_id: str, report: Report) -> None:
        outcome = await self._link().deliver(job_id, report)
        log.info("saved result of %s/%d: %s", job_id, report.attempt, outcome.value)
        self.state.drop_report(job_id, report.attempt)

    def _orphan_done(self, key: Key, _task: asyncio.Task[None]) -> None:
        self._orphans.pop(key, None)
        self._remember(key)

    # --- heartbeat -----------------------------------------------------------------------

    def listed(self) -> list[RunningAttempt]:
        """The attempts this node holds: running, or ended with the result not yet taken."""
        out = [
            RunningAttempt(job_id=j, attempt=a, paused=runner.paused)
            for (j, a), runner in self.runners.items()
        ]
        out += [
            RunningAttempt(job_id=j, attempt=a)
            for j, a in self._orphans
            if (j, a) not in self.runners
        ]
        return out

    async def _heartbeat_loop(self) -> None:
        link = self._link()
        backoff = Backoff(RETRY_BASE_S, RETRY_MAX_S)
        while True:
            await link.registered.wait()
            sample = metrics.sample(self.config.work_dir)
            if self.gpus.sampling:
                sample.gpus = await asyncio.to_thread(self.gpus.sample)
            req = HeartbeatRequest(
                metrics=sample,
                running=self.listed(),
                executor_error=self._executor_error,
                draining=self._drain.is_set(),
            )
            sent = time.perf_counter()
            try:
                reply = await link.client.heartbeat(
                    link.node_id,
                    req,
                    timeout=min(HEARTBEAT_TIMEOUT_S, 2 * link.heartbeat_interval_s),
                )
            except (NotFound, Unauthorized) as e:
                self.metrics.heartbeat_failures.inc()
                link.lost_registration(e.message)
                continue
            except BerthError as e:
                self.metrics.heartbeat_failures.inc()
                link.note_reachable(False, e.message)
                await asyncio.sleep(min(backoff.next(), link.heartbeat_interval_s))
                continue
            self.metrics.heartbeat_seconds.observe(time.perf_counter() - sent)
            backoff.reset()
            link.note_reachable(True)
            link.heartbeat_interval_s = reply.heartbeat_interval_s
            self._obey_all(reply.commands)
            # A drain starting is told to the scheduler at once, so it stops assigning.
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives together with the event.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(link.heartbeat_interval_s):
                    await self._beat_now.wait()
            self._beat_now.clear()

    def _obey_all(self, commands: list[Command]) -> None:
        for cmd in commands:
            self.obey(cmd)

    def obey(self, cmd: Command) -> None:
        """Apply one command of the scheduler to the attempt it names."""
        runner = self.runners.get((cmd.job_id, cmd.attempt))
        if runner is None:
            return
        if cmd.action == "cancel":
            log.info(
                "cancel %s/%d: %s", cmd.job_id, cmd.attempt, cmd.reason or "told by the scheduler"
            )
            runner.cancel(cmd.reason or "cancelled")
        elif cmd.action == "pause":
            self._background(runner.pause(), f"pause {cmd.job_id}")
        elif cmd.action == "resume":
            self._background(runner.resume(), f"resume {cmd.job_id}")

    def _background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro)

        def done(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed: %s", what, t.exception())

        task.add_done_callback(done)

    async def _health_loop(self) -> None:
        link = self._link()
        while True:
            error = await self.executor.check()
            if error != self._executor_error:
                if error:
                    log.error("executor broken: %s", error)
                else:
                    log.info("executor works again")
            self._executor_error = error
            if error is None and not self._adopted:
                await self._adopt(self._previous)
            await asyncio.sleep(link.heartbeat_interval_s)

    # --- assignments -----------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        link = self._link()
        backoff = Backoff(RETRY_BASE_S, RETRY_MAX_S)
        after = 0
        seen_registration = self._registrations
        while True:
            await link.registered.wait()
            if seen_registration != self._registrations:
                after, seen_registration = 0, self._registrations
            try:
                reply = await link.client.assignments(
                    link.node_id, after=after, wait=link.assignment_wait_s
                )
            except (NotFound, Unauthorized) as e:
                link.lost_registration(e.message)
                continue
            except BerthError as e:
                link.note_reachable(False, e.message)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            link.note_reachable(True)
            if reply.index < after:
                # The scheduler's index went back (its state was reset): start over.
                after = 0
                continue
            after = reply.index
            for assignment in reply.assignments:
                self.accept(assignment)

    def accept(self, a: Assignment) -> bool:
        """Start a runner for a new assignment; False if it is known already."""
        key = (a.job_id, a.attempt)
        if key in self.runners or key in self._finished or key in self._orphans:
            return False
        if self._drain.is_set():
            return False
        info = AttemptInfo(
            job_id=a.job_id,
            attempt=a.attempt,
            node_id=self._link().node_id,
            timeout_s=a.spec.timeout_s,
            memory_mb=a.spec.resources.memory_mb,
            checkpoint_interval_s=a.spec.checkpoint_interval_s,
            secret_env=secret_env_names(a.spec),
            gpus=self.gpus.grant(a.gpu_devices),
        )
        self._spawn(self._new_runner(info, a.spec, checkpoint=a.checkpoint, secrets=a.secrets))
        return True

    def _new_runner(
        self,
        info: AttemptInfo,
        spec: JobSpec | None,
        execution: Execution | None = None,
        *,
        checkpoint: str | None = None,
        secrets: dict[str, str] | None = None,
    ) -> Runner:
        link = self._link()
        files = AttemptFiles(
            self.workspaces.of(info.job_id, info.attempt),
            link,
            info.job_id,
            info.attempt,
            restored=checkpoint,
        )
        return Runner(
            info,
            spec,
            executor=self._timed,
            link=link,
            state=self.state,
            slots=self.slots,
            stop_grace_s=self.config.stop_grace_s,
            execution=execution,
            files=files,
            policy=self.policy,
            max_disk_mb=self.config.max_job_disk_mb,
            secrets=secrets,
        )

    def _spawn(self, runner: Runner) -> None:
        key = runner.key
        self.runners[key] = runner
        if self._hard_stop.is_set():
            runner.cancel("the agent is shutting down")
        task = asyncio.create_task(runner.run(), name=f"attempt {key[0]}/{key[1]}")
        self._runner_tasks[key] = task
        task.add_done_callback(functools.partial(self._runner_done, key))

    def _runner_done(self, key: Key, _task: asyncio.Task[None]) -> None:
        runner = self.runners.pop(key, None)
        if runner is not None and runner.result is not None:
            self.metrics.ended(runner.result.state)
        self._runner_tasks.pop(key, None)
        self._remember(key)

    def _remember(self, key: Key) -> None:
        self._finished[key] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)


async def _discard(execution: Execution) -> None:
    try:
        await execution.stop(0)
    except Exception as e:
        log.warning("could not stop %s: %s", execution.info.job_id, e)
    with contextlib.suppress(Exception):
        await execution.remove()


async def make_executor(config: AgentConfig) -> Executor:
    """The executor ``--executor`` asks for; ``auto`` is docker when dockerd answers."""
    kind = config.executor
    if kind in ("auto", "docker"):
        from agent.executors import docker as docker_executor

        answers = await asyncio.to_thread(docker_executor.docker_answers)
        if answers or kind == "docker":
            if not answers:
                log.error("dockerd does not answer; the node will report its executor broken")
            return await asyncio.to_thread(
                docker_executor.DockerExecutor,
                pull_policy=config.pull_policy,
                pull_timeout_s=config.pull_timeout_s,
                pids_limit=config.pids_limit,
                max_parallel=config.max_parallel,
                allow=config.allow,
                max_job_disk_mb=config.max_job_disk_mb,
            )
        log.warning("dockerd does not answer: falling back to the process executor")
    from agent.executors.process import ProcessExecutor

    return ProcessExecutor(config.work_dir)


def watch_children_by_pidfd() -> None:
    """Learn of the exits of the jobs' processes through pidfds on the event loop.

    Python 3.11's default watcher starts a thread per child to wait for it; a pidfd is
    one more file the loop polls. 3.12 and later pick pidfds on their own."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # a kernel before 5.3
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.get_event_loop_policy().set_child_watcher(watcher)


async def run_agent(config: AgentConfig) -> int:
    """Build the executor and run the agent until it stops; the process exit code."""
    watch_children_by_pidfd()
    try:
        offered = await asyncio.to_thread(gpus.discover, config.gpus)
    except gpus.GpuError as e:
        log.error("%s", e)
        return 2
    try:
        executor = await make_executor(config)
        return await Agent(config, executor, offered).run()
    finally:
        offered.close()


__all__ = ["Agent", "Delivery", "FatalError", "make_executor", "run_agent"]

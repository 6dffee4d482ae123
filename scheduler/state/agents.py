"""The agent protocol: heartbeats, assignments, reports, log appends and checkpoints,
each fenced by attempt; and an admin forgetting a node."""

from __future__ import annotations

from common.codec import to_builtins
from common.errors import Conflict, StaleAttempt
from common.history_models import UsagePoint
from common.models import (
    Assignment,
    Command,
    HeartbeatRequest,
    HeldAttempt,
    Job,
    Node,
    Progress,
    Report,
)
from common.states import ON_NODE, JobState
from scheduler import gpus
from scheduler.arrays import assigned_spec
from scheduler.nodes import sub
from scheduler.state.jobs import Jobs
from scheduler.state.nodes import AGENT_SHUTTING_DOWN
from scheduler.state.records import dt
from scheduler.store.base import LogChunk, UsageRow

#: node.metrics events are recorded at most this often per node
METRICS_EVENT_INTERVAL_S = 15.0
#: a running job missing from this many consecutive heartbeats of its node is lost
MISSING_HEARTBEATS_LOST = 2
#: per-attempt log cap; past it the log ends with a marker
LOG_CAP_BYTES = 10 * 1024 * 1024
LOG_TRUNCATED_MARKER = b"\n[berth: log truncated at 10 MiB]\n"
#: an attempt's stored usage samples are thinned, when too many, each time it has sent
#: this many more
USAGE_THIN_EVERY = 256
#: attempts whose samples are counted for that; past it the counts start again
USAGE_COUNTED = 100_000


def ran_on(job: Job, attempt: int, node_id: str) -> bool:
    """Whether that attempt of the job was given to that node (it may have ended since)."""
    if attempt == job.attempt:
        return job.node_id == node_id
    return any(a.attempt == attempt and a.node_id == node_id for a in job.attempts)


def _live_ram_was_binding(node: Node, ram_free_mb: int) -> bool:
    """Whether a heartbeat's free RAM can let more jobs fit than before: only when the
    node's live free RAM was below what its allocations left, and has grown."""
    if node.metrics is None:
        return True
    old = node.metrics.ram_free_mb
    allocatable = node.capacity.memory_mb - node.reserved.memory_mb - node.allocated.memory_mb
    return ram_free_mb > old and old < allocatable


class AgentProtocol(Jobs):
    def _setup(self) -> None:
        super()._setup()
        #: when each node's last node.metrics event was recorded
        self._metrics_event_at: dict[str, float] = {}
        #: (job id, attempt) -> usage samples taken since this scheduler started
        self._usage_counts: dict[tuple[str, int], int] = {}

    def heartbeat(self, node_id: str, req: HeartbeatRequest) -> list[Command]:
        """Take a node's metrics and running attempts; answer with what it must stop."""
        node = self.node(node_id)
        now = self.clock()
        node.last_heartbeat_at = dt(now)
        if self.queue and _live_ram_was_binding(node, req.metrics.ram_free_mb):
            # More live memory may let a waiting job fit.
            self._capacity_changed()
        node.metrics = req.metrics
        node.executor_error = req.executor_error
        if req.draining and not node.draining:
            self._set_draining(node, True, AGENT_SHUTTING_DOWN)
        if now - self._metrics_event_at.get(node.id, 0.0) >= METRICS_EVENT_INTERVAL_S:
            self._metrics_event_at[node.id] = now
            self._event("node.metrics", node=node, data=to_builtins(req.metrics))
        commands: list[Command] = []
        listed = {(r.job_id, r.attempt) for r in req.running}
        for held in [h for h in node.releasing if (h.job_id, h.attempt) not in listed]:
            # The agent stopped what it was told to stop: the resources are free.
            self._let_go(node, held)
        paused = {(r.job_id, r.attempt) for r in req.running if r.paused}
        for job_id, attempt in listed:
            job = self.jobs.get(job_id)
            current = (
                job is not None
                and job.node_id == node.id
                and job.attempt == attempt
                and job.state in ON_NODE
            )
            if current and job is not None:
                # Level-triggered: repeated until the agent's heartbeat shows it done.
                if job.state is JobState.PAUSED and (job_id, attempt) not in paused:
                    commands.append(Command("pause", job_id, attempt, job.reason or ""))
                elif job.state is JobState.RUNNING and (job_id, attempt) in paused:
                    commands.append(Command("resume", job_id, attempt, job.reason or ""))
            if not current:
                reason = "attempt is no longer current"
                ended = self.find(job_id) if job is None else job
                if (
                    ended is not None
                    and ended.state is JobState.CANCELLED
                    and ended.attempt == attempt
                ):
                    reason = ended.reason or "cancelled"
                commands.append(Command("cancel", job_id, attempt, reason))
        self._detect_lost(node, listed)
        # Metrics and the heartbeat time are not worth a disk write each time: after a
        # restart every node gets a grace anyway. State changes are recorded as events.
        self._refresh_node(node, offline_reason=None)
        return commands

    def _let_go(self, node: Node, held: HeldAttempt) -> None:
        node.releasing.remove(held)
        node.allocated = sub(node.allocated, held.resources)
        gpus.give_back(node, held.job_id, held.gpu_devices)
        self._views.pop(node.id, None)
        self.changes.nodes[node.id] = node
        self._capacity_changed()

    def _detect_lost(self, node: Node, listed: set[tuple[str, int]]) -> None:
        """Running jobs the agent stopped listing are lost (it restarted without them)."""
        missing = self.missing.setdefault(node.id, {})
        for job_id in list(node.running_jobs):
            job = self.jobs[job_id]
            if job.state is JobState.ASSIGNED or (job_id, job.attempt) in listed:
                missing.pop(job_id, None)
                continue
            missing[job_id] = missing.get(job_id, 0) + 1
            if missing[job_id] >= MISSING_HEARTBEATS_LOST:
                missing.pop(job_id, None)
                self._lose(job, node, "lost: its agent no longer runs it")

    def pending_assignments(self, node_id: str, after: int) -> tuple[list[Assignment], int]:
        node = self.node(node_id)
        out = []
        top = after
        # Only what is durable: an assignment an agent started on, then lost in a crash
        # before its commit, would be handed out again as the same attempt.
        committed = self.events.committed_index
        for job_id in node.running_jobs:
            job = self.jobs[job_id]
            if job.state is JobState.ASSIGNED and after < job.index <= committed:
                spec = assigned_spec(job)  # a task's spec gets its array index
                out.append(
                    Assignment(
                        job.id, job.attempt, spec, job.checkpoint, gpu_devices=job.gpu_devices
                    )
                )
                top = max(top, job.index)
        return out, max(top, after)

    def _current(self, node: Node, job_id: str, attempt: int) -> Job:
        """The job a report is about, if that attempt is current on that node (fencing)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise StaleAttempt(f"no job {job_id!r}", {"command": "cancel"})
        if job.node_id != node.id or job.attempt != attempt or job.state not in ON_NODE:
            raise StaleAttempt(
                f"attempt {attempt} of job {job_id} is not current on this node",
                {"command": "cancel", "current_attempt": job.attempt, "state": job.state},
            )
        return job

    def report(self, node_id: str, job_id: str, rep: Report) -> Job:
        node = self.node(node_id)
        held = next(
            (h for h in node.releasing if (h.job_id, h.attempt) == (job_id, rep.attempt)), None
        )
        if held is not None and rep.state not in (None, "running"):
            # The end of an attempt the scheduler had already let go of.
            self._let_go(node, held)
            ended = self.find(job_id)
            if ended is not None:
                if rep.outputs is not None and ended.attempt == rep.attempt:
                    # What a cancelled job left in /workspace/out is still its output.
                    live = self._revive(job_id)
                    assert live is not None
                    self._set_outputs(live, rep.outputs)
                    self.changes.jobs[job_id] = live
                    return live
                return ended
        job = self._current(node, job_id, rep.attempt)
        if rep.usage is not None:
            job.usage = rep.usage
        if rep.samples:
            self._take_samples(job, rep.attempt, rep.samples)
        if rep.checkpoint is not None:
            self._take_checkpoint(job, rep.attempt, rep.checkpoint)
        if rep.outputs is not None:
            self._set_outputs(job, rep.outputs)
        if rep.progress is not None:
            job.progress = rep.progress
            if rep.state is None:
                self._event(
                    "job.progress",
                    job=job,
                    data={"percent": rep.progress.percent, "message": rep.progress.message},
                )
        if rep.state is None:
            # Usage alone is not written to disk: it goes with the job's next change.
            return job
        if rep.state == "running":
            if job.state is JobState.ASSIGNED:
                self._set_state(job, JobState.RUNNING)
            return job
        if job.state is JobState.ASSIGNED and rep.state == "completed":
            # It ran, even if too briefly for its running report to come first.
            self._set_state(job, JobState.RUNNING)
        job.exit_code = rep.exit_code
        job.error = rep.error
        if rep.state == "completed":
            self._healthy_run(node)
            if job.progress is not None:
                job.progress = Progress(100.0, job.progress.message)
            self._set_state(job, JobState.COMPLETED)
        elif rep.state == "cancelled":
            self._set_state(job, JobState.CANCELLED, reason=rep.error or "cancelled by its agent")
        else:
            if rep.infra_failure:
                self._infra_failure(node)
            else:
                self._healthy_run(node)
            final = JobState.TIMED_OUT if rep.state == "timed_out" else JobState.FAILED
            why = rep.error or (
                "timed out" if final is JobState.TIMED_OUT else f"exit code {rep.exit_code}"
            )
            if rep.oom_killed:
                why = rep.error or "out of memory"
            if rep.lost:
                self._requeue_or_end(job, f"lost: {why}")
            else:
                self._retry_or_end(job, final, why)
        return job

    def _take_samples(self, job: Job, attempt: int, samples: list[UsagePoint]) -> None:
        """Store an attempt's usage samples and tell them live (job.usage)."""
        self.changes.usage.extend(UsageRow(job.id, attempt, p) for p in samples)
        key = (job.id, attempt)
        before = self._usage_counts.get(key, 0)
        if len(self._usage_counts) >= USAGE_COUNTED and before == 0:
            self._usage_counts.clear()
        after = self._usage_counts[key] = before + len(samples)
        if after // USAGE_THIN_EVERY > before // USAGE_THIN_EVERY:
            self.changes.usage_thin.append(key)
        self._live_event(
            "job.usage", job=job, data={"attempt": attempt, "samples": to_builtins(samples)}
        )

    def check_checkpoint(self, node_id: str, job_id: str, attempt: int) -> Job:
        """The job, if that attempt may write its checkpoint (see record_checkpoint)."""
        node = self.node(node_id)
        job = self.find(job_id)
        if job is None or not ran_on(job, attempt, node.id):
            raise StaleAttempt(f"attempt {attempt} of job {job_id} did not run on this node")
        if attempt < job.checkpoint_attempt:
            raise StaleAttempt(f"a later attempt of job {job_id} has written a checkpoint")
        return job

    def record_checkpoint(self, node_id: str, job_id: str, attempt: int, digest: str) -> Job:
        """Keep a checkpoint an attempt uploaded, for the job's next attempt.

        Accepted also from an attempt that is no longer current (cancelled, or lost while
        its agent could still be reached), as long as no later attempt wrote one. An
        ended job's checkpoint matters only to a retry, but it is kept.
        """
        self.check_checkpoint(node_id, job_id, attempt)
        live = self._revive(job_id)
        assert live is not None
        self._take_checkpoint(live, attempt, digest)
        return live

    def _take_checkpoint(self, job: Job, attempt: int, digest: str) -> None:
        self._set_checkpoint(job, attempt, digest)
        self._event("job.checkpoint", job=job, data={"checkpoint": digest, "attempt": attempt})

    def append_log(self, node_id: str, job_id: str, attempt: int, offset: int, data: bytes) -> int:
        """Append an attempt's log bytes at ``offset``; duplicates are dropped. Returns the end."""
        node = self.node(node_id)
        job = self.find(job_id)
        if job is None or not ran_on(job, attempt, node.id):
            raise StaleAttempt(f"attempt {attempt} of job {job_id} did not run on this node")
        key = (job_id, attempt)
        end = self.log_ends.get(key, 0)
        if offset > end:
            raise Conflict(f"log offset {offset} is past the end {end}", {"offset": end})
        fresh = data[end - offset :]
        if not fresh or end >= LOG_CAP_BYTES + len(LOG_TRUNCATED_MARKER):
            return end
        room = LOG_CAP_BYTES - end
        if len(fresh) > room:
            fresh = fresh[: max(0, room)] + LOG_TRUNCATED_MARKER
        self.changes.logs.append(LogChunk(job_id, attempt, end, fresh))
        self.log_ends[key] = end + len(fresh)
        return end + len(fresh)

    def forget_node(self, node_id: str, *, force: bool) -> tuple[Node, list[str]]:
        """Remove a node and its tokens, so that its name may be registered anew (an
        admin's way out when an agent lost its state dir). A node that runs jobs is
        refused unless ``force``: then its jobs are lost, as when a node goes offline.
        Returns the node as it was and the ids of the jobs it lost."""
        node = self.node(node_id)
        on_node = [*node.running_jobs, *(h.job_id for h in node.releasing)]
        if on_node and not force:
            raise Conflict(
                f"node {node.name!r} runs {len(on_node)} jobs; drain it and wait, or "
                "forget it with force (its jobs are then lost and retried elsewhere)",
                {"field": "force", "jobs": on_node},
            )
        lost = list(node.running_jobs)
        why = f"lost: node {node.name} was forgotten by an admin"
        for job_id in lost:
            job = self.jobs[job_id]
            job.error = why
            self._requeue_or_end(job, why)
        for row in self.tokens.of_node(node.id):
            self.tokens.drop(row.digest)
            self.changes.revoked_tokens.append(row.digest)
        # Not the lost jobs' ids: node events reach every reader, and each lost job's
        # own job.state event goes only to those who may see that job.
        self._event("node.forgotten", node=node, data={"name": node.name})
        del self.nodes[node.id]
        del self.node_by_name[node.name]
        self.changes.nodes.pop(node.id, None)
        self.changes.forgotten_nodes.append(node.id)
        for per_node in (self.missing, self._metrics_event_at, self._views):
            per_node.pop(node.id, None)
        self._capacity_changed()
        return node, lost

"""Liveness: silent nodes go offline and lose their jobs, jobs of silent agents time
out, cooldowns end."""

from __future__ import annotations

import heapq

from common.models import Job, Node, Resources
from common.states import JobState, NodeState
from scheduler import liveness
from scheduler.state.records import dt, ts
from scheduler.state.scheduling import Scheduling

#: how often the owners' fair-share usage is stored (seconds)
USAGE_SAVE_INTERVAL_S = 30.0


class Liveness(Scheduling):
    def _setup(self) -> None:
        super()._setup()
        self._usage_saved_at = self.clock()

    def check_liveness(self) -> bool:
        """Expire silent nodes, time out jobs of silent agents, end cooldowns.

        Returns True when a retry's wait ended, so placement should run.
        """
        now = self.clock()
        cfg = self.config
        for node in self.nodes.values():
            if node.state is NodeState.OFFLINE:
                continue
            deadline = liveness.heartbeat_deadline(
                ts(node.last_heartbeat_at),
                node.registered_at.timestamp(),
                self.booted,
                ttl_s=cfg.node_ttl_s,
                grace_s=cfg.restart_grace_s,
            )
            if now > deadline:
                self._node_offline(node, f"no heartbeat for {cfg.node_ttl_s:g}s")
            else:
                self._refresh_node(node, unchanged=True)
        self._expire_queued(now)
        self._charge_usage(now)
        for node in self.nodes.values():
            for job_id in list(node.running_jobs):
                job = self.jobs[job_id]
                if job.spec.deadline is not None and now >= job.spec.deadline.timestamp():
                    self._past_deadline(job)
                    self._wake_node(node.id)
                    continue
                started = ts(job.started_at) or ts(job.assigned_at) or now
                deadline = liveness.job_deadline(started, job.spec.timeout_s, cfg.timeout_grace_s)
                # After a restart the agent gets the same grace as its node to report.
                if now > max(deadline, self.booted + cfg.restart_grace_s):
                    job.error = (
                        f"timed out after {job.spec.timeout_s:g}s (enforced by the scheduler)"
                    )
                    self._retry_or_end(job, JobState.TIMED_OUT, job.error, hold=True)
                    self._wake_node(node.id)
        due = self.queue.next_due()
        return due is not None and due <= now

    def _charge_usage(self, now: float) -> None:
        """Age the owners' fair-share usage and charge what runs; store it now and then
        (a crash loses at most that much of it)."""
        self.fair.tick(
            now,
            (
                (job.submitted_by or "", job.spec.resources.cpu)
                for node in self.nodes.values()
                for job in (self.jobs[j] for j in node.running_jobs)
                if job.state is JobState.RUNNING
            ),
        )
        if now - self._usage_saved_at < USAGE_SAVE_INTERVAL_S:
            return
        self._usage_saved_at = now
        for name in {*self.fair.usage, *(o for o in self.owners if self.owners[o].usage_cpu_s)}:
            self._save_usage(name, now)

    def _expire_queued(self, now: float) -> None:
        """Queued jobs whose queue timeout or deadline came fail or are cancelled."""
        timers = self.queue_timers
        while timers and timers[0][0] <= now:
            _, job_id = heapq.heappop(timers)
            job = self.jobs.get(job_id)
            if job is None or job.state is not JobState.QUEUED:
                continue
            if job.spec.deadline is not None and now >= job.spec.deadline.timestamp():
                self._past_deadline(job)
                continue
            timeout = self._queue_timeout_of(job)
            if timeout is None or job.queued_at is None:
                continue
            if now < job.queued_at.timestamp() + timeout:
                continue  # it entered the queue again since: a later entry holds it
            why = f"not started within its queue timeout of {timeout:g}s"
            job.error = why
            job.error_code = "queue_timeout"
            self._set_state(job, JobState.FAILED, reason=why)

    def _past_deadline(self, job: Job) -> None:
        """A job that has not ended by its deadline is cancelled (Slurm's --deadline)."""
        assert job.spec.deadline is not None
        why = f"cancelled at its deadline {job.spec.deadline.isoformat()}"
        job.error = why
        job.error_code = "deadline"
        job.cancelled_by = "deadline"
        job.cancelled_at = dt(self.clock())
        self._set_state(job, JobState.CANCELLED, reason=why, hold=True)

    def _node_offline(self, node: Node, why: str) -> None:
        self._refresh_node(node, offline_reason=why)
        node.releasing = []
        lost = [self.jobs[j] for j in node.running_jobs]
        if lost:
            # Counted once per loss of the node, whatever the number of jobs it had.
            self._infra_failure(node)
        for job in lost:
            job.error = f"lost: node {node.name} went offline"
            self._requeue_or_end(job, job.error)
        node.allocated = Resources()
        node.device_jobs = {}
        self._views.pop(node.id, None)
        self.changes.nodes[node.id] = node

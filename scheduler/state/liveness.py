"""Liveness: silent nodes go offline and lose their jobs, jobs of silent agents time
out, cooldowns end."""

from __future__ import annotations

from common.models import Node, Resources
from common.states import JobState, NodeState
from scheduler import liveness
from scheduler.state.records import ts
from scheduler.state.scheduling import Scheduling


class Liveness(Scheduling):
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
        for node in self.nodes.values():
            for job_id in list(node.running_jobs):
                job = self.jobs[job_id]
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

    def _node_offline(self, node: Node, why: str) -> None:
        self._refresh_node(node, offline_reason=why)
        node.releasing = []
        lost = [self.jobs[j] for j in node.running_jobs]
        if lost:
            # Counted once per loss of the node, whatever the number of jobs it had.
            self._infra_failure(node)
        for job in lost:
            job.error = f"lost: node {node.name} went offline"
            self._retry_or_end(job, JobState.FAILED, job.error)
        node.allocated = Resources()
        self._views.pop(node.id, None)
        self.changes.nodes[node.id] = node

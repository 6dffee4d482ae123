"""Sharing the cluster between owners: the fair-share order within a priority, quotas
on what an owner's jobs take at once, and preemption of preemptible jobs of lower
priority for a job that fits nowhere. The placement pass (scheduling) asks these."""

from __future__ import annotations

from common.models import Job, Node
from common.states import ON_NODE
from scheduler import placement, preemption, quotas
from scheduler.quotas import Running
from scheduler.readyqueue import Entry
from scheduler.state.agents import AgentProtocol
from scheduler.state.records import ts

#: a shape's place in one pass: (-priority, owner's usage, submit order, id)
Order = tuple[int, float, int, str]


class Sharing(AgentProtocol):
    def _setup(self) -> None:
        super()._setup()
        #: queued job -> (node, jobs stopped there to make room for it, its reason)
        self.preempting: dict[str, tuple[str, tuple[str, ...], str]] = {}
        #: the preemptible jobs on each node, gathered once per pass when a job first
        #: fits nowhere (None: not yet, or a preemption changed them since)
        self._preemptible: list[tuple[Node, list[Job]]] | None = None

    def _preemptible_on_nodes(self) -> list[tuple[Node, list[Job]]]:
        found = []
        for node in self.nodes.values():
            on_node = [
                other
                for other in (self.jobs[j] for j in node.running_jobs)
                if other.spec.preemptible and other.state in ON_NODE
            ]
            if on_node:
                found.append((node, on_node))
        return found

    def _order(self, first: Entry, owner: str) -> Order:
        """Where a shape's first job stands in this pass: by priority, then (in the fair
        order) by its owner's recent usage, then by submission."""
        usage = self.fair.of(owner) if self.config.queue_order == "fair" else 0.0
        return (first[0], usage, first[1], first[2])

    def _over_quota(self, req: placement.JobRequest) -> str | None:
        """Why one more job of this owner may not start now, if its quota says so."""
        quota = self.quota_of(req.owner)
        if quota is None:
            return None
        running = self.running_by.get(req.owner) or Running()
        return quotas.beyond(req.owner or "-", quota, running, req.cpu, req.memory_mb)

    def _dequeued(self, job: Job) -> None:
        super()._dequeued(job)
        self.preempting.pop(job.id, None)

    def _preempt_for(self, job: Job, req: placement.JobRequest, now: float) -> str | None:
        """Stop preemptible jobs of lower priority to make room for ``job``, which fits
        nowhere; returns its reason while that goes on, or None when nothing can."""
        if not self.config.preemption:
            return None
        earlier = self.preempting.get(job.id)
        if earlier is not None:
            node_id, victims, reason = earlier
            node = self.nodes.get(node_id)
            if node is not None and any(h.job_id in victims for h in node.releasing):
                return reason  # its victims are still stopping: wait for them

        if self._preemptible is None:
            self._preemptible = self._preemptible_on_nodes()
        candidates: list[tuple[placement.NodeView, list[preemption.Candidate]]] = []
        for node, on_node in self._preemptible:
            running = [
                preemption.Candidate(
                    other.id,
                    other.spec.priority,
                    other.spec.resources.cpu,
                    other.spec.resources.memory_mb,
                    other.spec.resources.gpus,
                    ts(other.started_at) or ts(other.assigned_at) or now,
                )
                for other in on_node
                if other.spec.priority < req.priority
            ]
            if running:
                candidates.append((self.node_view(node), running))
        if not candidates:
            return None
        choice = preemption.choose(candidates, req, now)
        if choice is None:
            return None
        self._preemptible = None
        node = self.nodes[choice.node_id]
        for victim_id in choice.victims:
            victim = self.jobs[victim_id]
            why = f"preempted by job {job.id} (priority {job.spec.priority})"
            self._event(
                "job.preempted",
                job=victim,
                data={"by": job.id, "node_id": node.id, "attempt": victim.attempt},
            )
            self._requeue_or_end(victim, why, hold=True, avoid_node=False)
        self._wake_node(node.id)
        stopped = ", ".join(choice.victims)
        reason = f"{preemption.PREEMPTING}: stopping job(s) {stopped} on node {node.name}"
        self.preempting[job.id] = (node.id, choice.victims, reason)
        return reason

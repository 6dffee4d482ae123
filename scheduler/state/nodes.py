"""Nodes: registration, health, drain, cooldown, and the view placement takes of them."""

from __future__ import annotations

import secrets
from typing import Any

from common.errors import Conflict, NotFound
from common.models import Node, RegisterRequest
from common.states import NodeState
from scheduler import gpus, liveness, placement
from scheduler.config import LATE_AFTER_INTERVALS
from scheduler.nodes import cooldown_seconds, node_status
from scheduler.state.blobrefs import BlobRefs
from scheduler.state.records import dt, ts
from scheduler.tokens import NODE, token_digest

#: the drain reason of a node whose agent is shutting down
AGENT_SHUTTING_DOWN = "its agent is shutting down"
_TAKING_JOBS = (NodeState.IDLE, NodeState.BUSY)


class Nodes(BlobRefs):
    def _setup(self) -> None:
        super()._setup()
        self.nodes: dict[str, Node] = {}
        self.node_by_name: dict[str, str] = {}
        #: placement views of nodes that did not change since they were built
        self._views: dict[str, placement.NodeView] = {}

    def node(self, node_id: str) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}", {"field": "node_id"})
        return node

    def register(self, req: RegisterRequest, *, replace: bool = False) -> tuple[Node, str]:
        """Register an agent and return its node and node token.

        A new name gets a new node and token. A registered name keeps its node id, but
        only for the agent that proves it is that node by sending its node token (it
        keeps that token, so a retried request cannot lock it out), or with ``replace``
        (an admin: a new token, and the node's old ones stop working). The join token
        alone never takes over a node: the name is refused with 409.
        """
        now = self.clock()
        node_id = self.node_by_name.get(req.name)
        token = secrets.token_urlsafe(32)
        kept = False
        if node_id is None:
            node = Node(
                id="n" + secrets.token_hex(7),
                name=req.name,
                state=NodeState.IDLE,
                capacity=req.capacity,
                registered_at=dt(now),
            )
            self.nodes[node.id] = node
            self.node_by_name[node.name] = node.id
            fresh = True
        else:
            node = self.nodes[node_id]
            if req.node_token is not None and self.tokens.proves_node(req.node_token, node.id):
                token, kept = req.node_token, True
            elif not replace:
                raise Conflict(
                    f"node {req.name!r} is already registered and this request does not "
                    "carry its node token (its agent keeps it in its state dir); if that "
                    f"agent is gone for good, an admin runs `berth node forget {req.name}` "
                    "and this agent may then register",
                    {"field": "$.node_token"},
                )
            # Every other token of the node stops working.
            for row in self.tokens.of_node(node.id):
                if not (kept and row.digest == token_digest(token)):
                    self.tokens.drop(row.digest)
                    self.changes.revoked_tokens.append(row.digest)
            fresh = False
        node.hostname = req.hostname
        node.labels = dict(req.labels)
        node.capacity = req.capacity
        node.reserved = req.reserved
        node.max_parallel = req.max_parallel
        node.executor = req.executor
        node.version = req.version
        node.allow = list(req.allow)
        node.devices = gpus.registered(req)
        node.last_heartbeat_at = dt(now)
        node.executor_error = None
        if node.draining and node.drain_reason == AGENT_SHUTTING_DOWN:
            # The agent that was shutting down is back.
            node.draining = False
            node.drain_reason = None
        if not kept:
            self.add_token(token, NODE, f"node:{node.name}", node.id)
        self._event(
            "node.registered",
            node=node,
            data={"name": node.name, "new": fresh, "executor": node.executor},
        )
        self._refresh_node(node, offline_reason=None)
        self._capacity_changed()
        return node, token

    def _refresh_node(
        self,
        node: Node,
        *,
        offline_reason: str | bool | None = False,
        record: bool = True,
        unchanged: bool = False,
    ) -> None:
        """Recompute a node's state; record a node.state event when it changed.

        ``offline_reason``: False keeps the node's offline status as it is, None clears
        it (the node was heard from), a string declares it offline. ``unchanged``: only
        time passed since the node's last change (the liveness check), so its placement
        view stays unless its state changes now: rebuilding every node's view once a
        second made each placement pass after the check look at every node anew.
        """
        if not unchanged:
            self._views.pop(node.id, None)
        now = self.clock()
        if offline_reason is False:
            offline = node.reason if node.state is NodeState.OFFLINE else None
        else:
            offline = offline_reason if isinstance(offline_reason, str) else None
        cooldown = ts(node.cooldown_until)
        state, reason = node_status(
            offline_reason=offline,
            executor_error=node.executor_error,
            in_cooldown=cooldown is not None and cooldown > now,
            late=liveness.is_late(
                ts(node.last_heartbeat_at),
                now,
                interval_s=self.config.heartbeat_interval_s,
                late_after=LATE_AFTER_INTERVALS,
            ),
            jobs=len(node.running_jobs),
        )
        if (state, reason) == (node.state, node.reason):
            return
        self._views.pop(node.id, None)
        old = node.state
        node.state, node.reason = state, reason
        if record:
            data: dict[str, Any] = {"state": state.value, "from": old.value}
            if reason:
                data["reason"] = reason
            self._event("node.state", node=node, data=data)
        if old not in _TAKING_JOBS and state in _TAKING_JOBS:
            self._capacity_changed()

    def drain(self, node_id: str, drain: bool, reason: str) -> Node:
        node = self.node(node_id)
        self._set_draining(node, drain, reason or None)
        return node

    def _set_draining(self, node: Node, drain: bool, reason: str | None) -> None:
        node.draining = drain
        node.drain_reason = reason if drain else None
        self._views.pop(node.id, None)
        data = {"state": node.state.value, "draining": drain, "reason": node.drain_reason}
        self._event("node.state", node=node, data=data)
        if not drain:
            self._capacity_changed()

    def _healthy_run(self, node: Node) -> None:
        if node.infra_failures or node.cooldown_until is not None:
            node.infra_failures = 0
            node.cooldown_until = None
            self._refresh_node(node)
            self.changes.nodes[node.id] = node

    def _infra_failure(self, node: Node) -> None:
        node.infra_failures += 1
        seconds = cooldown_seconds(
            node.infra_failures,
            threshold=self.config.cooldown_threshold,
            base_s=self.config.cooldown_base_s,
            max_s=self.config.cooldown_max_s,
        )
        if seconds > 0:
            node.cooldown_until = dt(self.clock() + seconds)
        self._refresh_node(node)
        self.changes.nodes[node.id] = node

    def node_view(self, node: Node) -> placement.NodeView:
        cap, res, alloc = node.capacity, node.reserved, node.allocated
        total_cpu = max(0.0, cap.cpu - res.cpu)
        total_mem = max(0, cap.memory_mb - res.memory_mb)
        gpu_model, gpu_memory_mb = gpus.facts(node.devices)
        return placement.NodeView(
            id=node.id,
            free_cpu=total_cpu - alloc.cpu,
            free_memory_mb=total_mem - alloc.memory_mb,
            free_gpus=cap.gpus - res.gpus - alloc.gpus,
            free_slots=node.max_parallel - len(node.running_jobs) - len(node.releasing),
            total_cpu=total_cpu,
            total_memory_mb=total_mem,
            labels=node.labels,
            healthy=node.state in _TAKING_JOBS,
            draining=node.draining,
            cooldown_until=ts(node.cooldown_until),
            live_free_memory_mb=node.metrics.ram_free_mb
            if node.metrics and node.metrics.ram_total_mb
            else None,
            cpu_percent=node.metrics.cpu_percent if node.metrics else 0.0,
            allows=tuple(node.allow),
            gpu_model=gpu_model,
            gpu_memory_mb=gpu_memory_mb,
        )

    def _cached_view(self, node: Node) -> placement.NodeView:
        """The node's placement view, rebuilt only after the node changed.

        Every change to a node goes through _refresh_node (or drops the view itself),
        and reserving re-checks against a fresh view, so a stale view can cost a
        decision but never over-commit a node.
        """
        view = self._views.get(node.id)
        if view is None:
            view = self._views[node.id] = self.node_view(node)
        return view

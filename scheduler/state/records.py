"""The base of the state: the clock, the change set of the command under way, and
what must follow its commit.

Every change to a job or node is recorded here as an event with the next index, and
the record it changed joins the change set; audit records join it too. The service
takes the change set, commits it, and only then does what the effects ask for (wake a
node's long poll, run a placement pass).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.codec import rfc3339
from common.models import Job, Node
from scheduler.config import SchedulerConfig
from scheduler.events import Event, EventLog
from scheduler.readyqueue import ReadyQueue
from scheduler.store.base import AuditRecord, Changes
from scheduler.tokens import TokenRow


def dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass(slots=True)
class Effects:
    """What must happen once a change set is durable."""

    #: a placement pass may place something now
    placement_wanted: bool = False
    #: nodes with new assignments or commands: their long polls are answered
    wake_nodes: set[str] = field(default_factory=set)
    #: events told to live subscribers once the change set is durable, never stored
    #: (samples: they would push jobs' events out of the replay window); the service
    #: gives each the index of the last stored event before it
    live: list[Event] = field(default_factory=list)

    def merge(self, other: Effects) -> None:
        self.placement_wanted |= other.placement_wanted
        self.wake_nodes |= other.wake_nodes
        self.live.extend(other.live)


class Records:
    def __init__(
        self,
        config: SchedulerConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.events = EventLog()
        #: events with an index below this may have been dropped by retention
        self.events_pruned_below = 0
        self.changes = Changes()
        self.effects = Effects()
        self.booted = clock()
        #: queued jobs, in order, grouped by what they ask for
        self.queue = ReadyQueue()
        self._setup()

    def _setup(self) -> None:
        """Each layer above makes its own collections here (calling super() first)."""

    def _event(
        self,
        type_: str,
        *,
        job: Job | None = None,
        node: Node | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        index = self.events.next_index()
        self.changes.events.append(
            Event(
                index=index,
                type=type_,
                ts=dt(self.clock()),
                job_id=job.id if job else None,
                node_id=node.id if node else None,
                data=data,
            )
        )
        if job is not None:
            job.index = index
            self.changes.jobs[job.id] = job
        if node is not None:
            node.index = index
            self.changes.nodes[node.id] = node
        return index

    def audit(
        self,
        who: TokenRow,
        action: str,
        target: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record who did what, in the same commit as the change itself."""
        self.changes.audit.append(
            AuditRecord(self._stamp(), who.name, who.role, action, target, details)
        )

    def _stamp(self) -> str:
        return rfc3339(dt(self.clock()))

    def _placement_wanted(self) -> None:
        """A queued job may be placeable now (it is new, or its wait ended)."""
        self.effects.placement_wanted = True

    def _capacity_changed(self, group: str | None = None) -> None:
        """Something changed that could let a sleeping part of the queue fit."""
        self.queue.wake(group)
        self.effects.placement_wanted = True

    def _live_event(
        self, type_: str, *, job: Job | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """An event for live subscribers only (see ``Effects.live``)."""
        self.effects.live.append(
            Event(
                index=0,
                type=type_,
                ts=dt(self.clock()),
                job_id=job.id if job else None,
                data=data,
            )
        )

    def _wake_node(self, node_id: str) -> None:
        self.effects.wake_nodes.add(node_id)

    def take_effects(self) -> Effects:
        effects, self.effects = self.effects, Effects()
        return effects

"""The queue of jobs waiting for a node, kept in order as jobs arrive and leave.

Queued jobs are grouped into shapes: what they ask for (CPU, memory, GPUs), their
static filter (constraint labels, permissions they need), their concurrency group,
their owner (so that owners can be interleaved, and one at its quota waits alone) and
how long they are expected to run, within a factor of sqrt(2) (a short job may
backfill where a long one of the same size may not; coarse, so that jobs whose
estimates differ a little still share a shape).
Every job of a shape fits exactly where every other one does, so once the first job of
a shape fits nowhere the shape goes to sleep with that reason, and no pass looks at it
again until something happens that could make it fit (``wake``). A placement pass
therefore costs the number of shapes plus the jobs it places, not the depth of the
queue; the jobs behind the first of a sleeping shape share its reason.

Jobs that may not be placed yet wait apart: a retry's backoff in a heap by time, and a
job still waiting on a dependency outside every shape until the last one completes.
Pure bookkeeping: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Iterator

from scheduler.placement import FilterKey, JobRequest, filter_key, queue_order

#: (cpu, memory_mb, gpus, static filter, concurrency group, owner, estimate class)
ShapeKey = tuple[float, int, int, FilterKey, str | None, str, int]
#: a job's place in the queue: (-priority, submit order, id)
Entry = tuple[int, int, str]


def estimate_class(estimate: float) -> int:
    """Estimates within a factor of sqrt(2) share a class."""
    if not math.isfinite(estimate) or estimate <= 1.0:
        return -1 if estimate <= 1.0 else 1 << 30
    return math.ceil(2 * math.log2(estimate))


def entry(req: JobRequest) -> Entry:
    """The job's place in the queue's one order (placement.queue_order), with its id."""
    return (*queue_order(req), req.id)


class Shape:
    """Queued jobs that ask for the same thing, in queue order."""

    __slots__ = ("asleep", "entries", "group", "key", "pending", "reason", "request")

    def __init__(self, key: ShapeKey, request: JobRequest, group: str | None) -> None:
        self.key = key
        #: a job of the shape: what every one of them asks for
        self.request = request
        self.group = group
        self.entries: list[Entry] = []
        #: the first job fitted nowhere and nothing has changed since
        self.asleep = False
        #: why the shape's jobs wait, while it sleeps
        self.reason: str | None = None
        #: with a reason about the nodes: how many nodes each cause blocks
        self.pending: dict[str, int] | None = None

    def head(self) -> str | None:
        return self.entries[0][2] if self.entries else None

    def sleep(self, reason: str, pending: dict[str, int] | None = None) -> None:
        self.asleep = True
        self.reason = reason
        self.pending = pending

    def __len__(self) -> int:
        return len(self.entries)


class ReadyQueue:
    def __init__(self) -> None:
        #: every queued job's placement request, by id
        self.requests: dict[str, JobRequest] = {}
        self._shapes: dict[ShapeKey, Shape] = {}
        #: the shape each job placeable now is in
        self._shape_of: dict[str, Shape] = {}
        #: jobs backing off before a retry: (not before, seq, id), a heap; an entry is
        #: live while _delayed_until names the same time for its job
        self._delayed: list[tuple[float, int, str]] = []
        self._delayed_until: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.requests)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.requests

    def __iter__(self) -> Iterator[str]:
        return iter(self.requests)

    def get(self, job_id: str) -> JobRequest | None:
        return self.requests.get(job_id)

    # --- arrivals and departures -----------------------------------------------------

    def add(
        self,
        req: JobRequest,
        group: str | None,
        *,
        not_before: float | None,
        now: float,
        waiting: bool,
    ) -> None:
        """A job entered the queue. ``waiting``: a dependency has not completed yet
        (``ready`` brings it in); ``not_before``: it backs off until then."""
        self.requests[req.id] = req
        if waiting:
            return
        if not_before is not None and not_before > now:
            self._delayed_until[req.id] = not_before
            heapq.heappush(self._delayed, (not_before, req.seq, req.id))
            return
        self._into_shape(req, group)

    def ready(
        self, job_id: str, group: str | None, *, not_before: float | None, now: float
    ) -> None:
        """The job's last dependency completed: it may be placed from now on (or once
        its backoff ends)."""
        req = self.requests.get(job_id)
        if req is None or job_id in self._shape_of or job_id in self._delayed_until:
            return
        if not_before is not None and not_before > now:
            self._delayed_until[job_id] = not_before
            heapq.heappush(self._delayed, (not_before, req.seq, job_id))
        else:
            self._into_shape(req, group)

    def remove(self, job_id: str) -> None:
        """The job left the queue (placed, cancelled, failed)."""
        req = self.requests.pop(job_id, None)
        if req is None:
            return
        self._delayed_until.pop(job_id, None)
        shape = self._shape_of.pop(job_id, None)
        if shape is None:
            return
        entries = shape.entries
        i = bisect.bisect_left(entries, entry(req))
        if i < len(entries) and entries[i][2] == job_id:
            del entries[i]
        if not entries:
            del self._shapes[shape.key]

    def release_due(self, now: float, group_of: Callable[[str], str | None]) -> list[str]:
        """Bring the jobs whose backoff ended into their shapes (``group_of`` names a
        job's concurrency group). Returns their ids."""
        due = []
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            until, _, job_id = heapq.heappop(delayed)
            if self._delayed_until.get(job_id) != until:
                continue  # removed, or delayed again since
            del self._delayed_until[job_id]
            self._into_shape(self.requests[job_id], group_of(job_id))
            due.append(job_id)
        return due

    def next_due(self) -> float | None:
        """When the next backoff ends (stale heap entries may make this early)."""
        return self._delayed[0][0] if self._delayed else None

    def _into_shape(self, req: JobRequest, group: str | None) -> None:
        key: ShapeKey = (
            req.cpu,
            req.memory_mb,
            req.gpus,
            filter_key(req),
            group,
            req.owner,
            estimate_class(req.estimate),
        )
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = Shape(key, req, group)
        bisect.insort(shape.entries, entry(req))
        self._shape_of[req.id] = shape

    # --- what a pass looks at --------------------------------------------------------

    def shapes(self) -> list[Shape]:
        return list(self._shapes.values())

    def wake(self, group: str | None = None) -> None:
        """Something changed that could let sleeping shapes fit (capacity freed, a node
        came or recovered, a drain ended); with ``group``, only that group's room grew."""
        for shape in self._shapes.values():
            if group is None or shape.group == group:
                shape.asleep = False

    def shape_of(self, job_id: str) -> Shape | None:
        return self._shape_of.get(job_id)

    def backing_off(self, job_id: str) -> bool:
        return job_id in self._delayed_until

    def reason_of(self, job_id: str) -> str | None:
        """Why the job waits, when its shape sleeps (it shares the reason of the first)."""
        shape = self._shape_of.get(job_id)
        return shape.reason if shape is not None and shape.asleep else None

    def pending_of(self, job_id: str) -> dict[str, int] | None:
        """The counts of nodes by cause that go with ``reason_of``, if any."""
        shape = self._shape_of.get(job_id)
        return shape.pending if shape is not None and shape.asleep else None

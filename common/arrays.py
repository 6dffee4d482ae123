"""Job arrays as clients see them: one spec run as ``count`` tasks sharing an array id.

A task is a job with ``array_id`` and ``array_index`` set; the array id is the id of
its first task (index 0). These are the replies and bodies of ``/api/v1/arrays/{id}``.
"""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct

from common.models import JobSpec


class ArraySummary(Struct):
    """An array: its tasks counted by state, and what they run."""

    id: str
    name: str
    count: int
    #: every job state -> how many of the array's tasks are in it
    counts: dict[str, int]
    spec: JobSpec
    created_at: datetime
    owner: str | None = None
    #: the concurrency group holding its tasks to max_concurrent (array:<id>), if any
    group: str | None = None
    max_concurrent: int | None = None
    #: tasks kept (the rest were deleted by retention)
    kept: int = 0
    #: the event index this summary was read at
    index: int = 0


class ArrayRetry(Struct, forbid_unknown_fields=True):
    """Which ended tasks a retry of the array runs again."""

    #: True: failed, timed_out and cancelled tasks; False: every ended task (completed
    #: ones are answered refused: a completed job is final)
    failed_only: bool = True

"""Job arrays in the scheduler: how an array's tasks are named and what each is told.

An array of ``count`` tasks takes ``count`` consecutive job ids, the first of which is
the array's id, so the ids of its tasks follow from the array id and the count alone:
the index of arrays (array id -> count) stays small, and an ended array whose tasks
are only rows in the store is found again by reading its first task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

from common.models import Job, JobSpec

#: concurrency groups named so hold an array's tasks to its max_concurrent; a spec may
#: not name one
GROUP_PREFIX = "array:"
#: the environment each task gets
ENV_INDEX = "BERTH_ARRAY_INDEX"
ENV_ID = "BERTH_ARRAY_ID"


@dataclass(slots=True)
class ArrayEntry:
    """What the state keeps of an array: its size, and the one spec its tasks share."""

    count: int
    spec: JobSpec
    owner: str | None
    created_at: datetime


def group_of(array_id: str) -> str:
    return f"{GROUP_PREFIX}{array_id}"


def task_id(array_id: str, index: int) -> str:
    return f"{int(array_id, 16) + index:014x}"


def task_ids(array_id: str, count: int) -> list[str]:
    """The ids of an array's tasks, by index."""
    first = int(array_id, 16)
    return [f"{first + i:014x}" for i in range(count)]


def is_job_id(value: str) -> bool:
    """Of the form the scheduler gives job ids (and so array ids): 14 hex digits."""
    return len(value) == 14 and all(c in "0123456789abcdef" for c in value)


def assigned_spec(job: Job) -> JobSpec:
    """The spec an agent gets for the job: a task's with its array id and index added to
    the environment. The tasks share one spec; the copy lives as long as the reply."""
    if job.array_id is None:
        return job.spec
    env = {**job.spec.env, ENV_INDEX: str(job.array_index), ENV_ID: job.array_id}
    return msgspec.structs.replace(job.spec, env=env)

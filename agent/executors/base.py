"""The executor interface: start an attempt, follow its output, stop it, re-adopt it.

An :class:`Executor` turns a JobSpec into an :class:`Execution` (one running attempt).
Each backend lives in its own module (``docker``, ``process``); the runner and the
daemon only ever see this interface, so swapping the backend changes no caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from agent.gpus import GpuGrant
from agent.registryauth import PullSecret
from common.models import JobSpec


class StartError(Exception):
    """An attempt could not start.

    ``infra`` is True when the node is at fault (the container could not be created
    or started for a reason of the host's), False when the job is (its image is
    missing, its command does not exist).
    """

    def __init__(self, message: str, *, infra: bool) -> None:
        super().__init__(message)
        self.message = message
        self.infra = infra


@dataclass(frozen=True)
class ExitStatus:
    """How an attempt ended."""

    exit_code: int | None
    #: killed by the kernel for going over its memory limit
    oom_killed: bool = False
    #: set when the outcome is unknown because of the node (e.g. lost across a restart)
    infra_error: str | None = None


@dataclass(frozen=True)
class AttemptInfo:
    """What an execution knows about its attempt, also when it was re-adopted."""

    job_id: str
    attempt: int
    node_id: str
    timeout_s: float
    memory_mb: int
    #: upload /checkpoint this often while the attempt runs (None: only when it stops)
    checkpoint_interval_s: float | None = None
    #: the env variables that hold secrets' values (names only: see agent.secretvalues)
    secret_env: tuple[str, ...] = ()
    #: the GPUs it was given; None on an agent that offers no GPUs
    gpus: GpuGrant | None = None


@dataclass(frozen=True)
class Mounts:
    """Host directories given to an attempt (see :mod:`agent.workspace`)."""

    #: at /workspace in a container; the cwd of a process, $BERTH_WORKSPACE
    workspace: Path
    #: at /checkpoint in a container; $BERTH_CHECKPOINT
    checkpoint: Path


@dataclass(frozen=True)
class UsageSample:
    """What an attempt uses right now."""

    #: percent of one core (200 = two cores busy)
    cpu_percent: float
    memory_mb: float


class Execution(ABC):
    """One attempt being run by an executor."""

    info: AttemptInfo
    #: wall-clock time (epoch seconds) the attempt started, None if unknown
    started_at: float | None = None
    #: it was found paused when re-adopted
    paused: bool = False
    #: the secret values a re-adopted attempt's environment holds: its output is masked
    #: with them (an attempt started by this agent is masked with its assignment's)
    masked: tuple[str, ...] = ()
    #: the executor keeps the output (:meth:`tail` reads its end again), so a reader may
    #: stop reading it; otherwise all of it must be read (a pipe would block the job)
    keeps_output: ClassVar[bool] = False

    @abstractmethod
    def logs(self, skip: int = 0) -> AsyncIterator[bytes]:
        """Stdout and stderr as one byte stream from the start, minus the first ``skip``
        bytes; ends when the attempt has exited."""

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Wait for the attempt to exit."""

    @abstractmethod
    async def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` seconds if it still runs."""

    @abstractmethod
    async def pause(self) -> None: ...

    @abstractmethod
    async def resume(self) -> None: ...

    @abstractmethod
    async def remove(self) -> None:
        """Release what the attempt holds (container, scratch files); idempotent."""

    async def usage(self) -> UsageSample | None:
        """A sample of the attempt's CPU and memory use, None when unknown."""
        return None

    async def tail(self, max_bytes: int) -> bytes | None:
        """At most the last ``max_bytes`` of the output, read again after the exit; None
        when the executor keeps no output (then the whole stream must be read)."""
        return None

    async def disk_paths(self) -> list[str]:
        """Host directories the attempt writes besides its workspace (a container's
        writable layer), measured for the per-job disk quota."""
        return []


class Executor(ABC):
    """Runs attempts on this host."""

    #: the name reported to the scheduler
    kind: ClassVar[str]

    @abstractmethod
    async def start(
        self,
        info: AttemptInfo,
        spec: JobSpec,
        mounts: Mounts | None = None,
        *,
        pull_secret: PullSecret | None = None,
    ) -> Execution:
        """Start an attempt with its workspace and checkpoint directories (``mounts``)
        and the value of its ``image_pull_secret`` (for executors that pull images);
        raise StartError when it cannot start."""

    @abstractmethod
    async def adopt(self, node_ids: set[str]) -> list[Execution]:
        """The attempts left by a previous run of the agent for these node ids.

        Leftovers that cannot be followed are cleaned up here; what is returned is
        either still running or exited with its outcome still readable.
        """

    @abstractmethod
    async def check(self) -> str | None:
        """None when the executor works, else what is wrong (sent with heartbeats)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the executor's own resources."""


async def empty_stream() -> AsyncIterator[bytes]:
    """A log stream with nothing in it."""
    for _ in ():
        yield b""

"""The agent's settings, with every default a named constant in this one place."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.archives import MAX_EXPANDED_BYTES, MAX_MEMBERS
from common.models import PullPolicy

#: where the agent keeps its node id, token and pending results
DEFAULT_STATE_DIR = Path("state/agent")
#: seconds between heartbeats until the scheduler says otherwise
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
#: seconds one assignments long poll may block, until the scheduler says otherwise
DEFAULT_ASSIGNMENT_WAIT_S = 30.0
#: when a job's image is pulled, unless the job says (common.models.PullPolicy)
DEFAULT_PULL_POLICY: PullPolicy = "if-not-present"
#: seconds to wait for an image pull before failing the job
DEFAULT_PULL_TIMEOUT_S = 300.0
#: seconds between SIGTERM and SIGKILL when a job is cancelled or times out
DEFAULT_STOP_GRACE_S = 10.0
#: the most processes (threads included) one container may have
DEFAULT_PIDS_LIMIT = 512
#: ship logs at least this often while a job writes them
LOG_FLUSH_INTERVAL_S = 0.5
#: ship logs at once when this much is buffered
LOG_FLUSH_BYTES = 64 * 1024
#: the most bytes sent in one log append
LOG_MAX_APPEND = 256 * 1024
#: send progress reports at most this often per attempt
PROGRESS_MIN_INTERVAL_S = 0.5
#: seconds a single heartbeat request may take before it counts as failed
HEARTBEAT_TIMEOUT_S = 10.0
#: timeout of one report or log append
REPORT_TIMEOUT_S = 15.0
#: longest backoff between retries while the scheduler is unreachable
RETRY_MAX_S = 5.0
#: first backoff delay while the scheduler is unreachable
RETRY_BASE_S = 0.2
#: seconds a draining agent keeps trying to deliver results before it exits anyway
#: (they stay in the state dir and are sent on the next start)
SHUTDOWN_DELIVERY_S = 20.0
#: sample each running attempt's CPU and memory this often
USAGE_SAMPLE_INTERVAL_S = 2.0
#: send an attempt's resource use at most this often
USAGE_REPORT_INTERVAL_S = 5.0
#: an input or checkpoint archive may expand to at most this many bytes (and outputs
#: and checkpoints are archived up to it)
DEFAULT_MAX_ARCHIVE_BYTES = MAX_EXPANDED_BYTES
#: ... and hold at most this many members
DEFAULT_MAX_ARCHIVE_MEMBERS = MAX_MEMBERS

#: a container's json-file log is rotated at this size, and keeps at most this many
#: files: what a job's output may take of the agent's disk
CONTAINER_LOG_MAX_SIZE = "32m"
CONTAINER_LOG_MAX_FILES = 3
#: the agent ships this much of an attempt's output from its start, then stops
#: reading it (the scheduler keeps 10 MiB of a log: scheduler.state.agents.LOG_CAP_BYTES) ...
LOG_HEAD_BYTES = 9 * 1024 * 1024
#: ... and this much of its end once it has exited, after a marker
LOG_TAIL_BYTES = 512 * 1024
#: a job's writable layer, workspace and checkpoint directory may hold this many MiB
DEFAULT_MAX_JOB_DISK_MB = 10 * 1024
#: measure what they hold this often
DISK_CHECK_INTERVAL_S = 2.0

ExecutorKind = Literal["auto", "docker", "process"]
#: which GPUs the agent offers: every one NVML finds, none, or these indices (agent.gpus)
GpuSelection = Literal["auto", "none"] | tuple[int, ...]


def default_max_parallel(cpus: int | None = None) -> int:
    """Half the host's CPUs, at least 1."""
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, n // 2)


@dataclass
class AgentConfig:
    """Everything the agent daemon is started with (see ``berth agent --help``)."""

    schedulers: list[str]
    join_token: str
    state_dir: Path = DEFAULT_STATE_DIR
    name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    max_parallel: int = field(default_factory=default_max_parallel)
    executor: ExecutorKind = "auto"
    reserve_cpu: float = 0.0
    reserve_memory_mb: int = 0
    #: a job's pull_policy when it names none
    pull_policy: PullPolicy = DEFAULT_PULL_POLICY
    pull_timeout_s: float = DEFAULT_PULL_TIMEOUT_S
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    pids_limit: int = DEFAULT_PIDS_LIMIT
    ca_file: str | None = None
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    max_archive_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS
    #: a job's writable layer, workspace and checkpoint may hold at most this many MiB
    max_job_disk_mb: int = DEFAULT_MAX_JOB_DISK_MB
    #: what jobs may ask beyond the sandbox: privileged, host-network, mount:/path
    #: (common.policy); nothing by default
    allow: list[str] = field(default_factory=list)
    #: the GPUs offered to jobs (``--gpus``)
    gpus: GpuSelection = "auto"
    #: (host, port) to serve the agent's Prometheus metrics on; None: not served
    metrics_listen: tuple[str, int] | None = None

    @property
    def work_dir(self) -> Path:
        """Scratch space of the process executor; its disk is the one reported free."""
        return self.state_dir / "work"

    @property
    def workspaces_dir(self) -> Path:
        """Attempts' workspace and checkpoint directories (see agent.workspace)."""
        return self.state_dir / "workspaces"

"""The text of `berth job JOB`: its state, spec, why it waits and where it is to start,
and every attempt."""

from __future__ import annotations

from datetime import UTC, datetime

from cli.text import ago, table, until, utc
from common.models import Job, JobSpec, Reservation
from common.states import JobState


def _pending_counts(pending: dict[str, int]) -> str:
    """A queued job's nodes by why they cannot take it, most first: ``parallel_limit 2,
    memory 2, draining 1`` (the keys are those of the job's ``pending``)."""
    causes = sorted(pending.items(), key=lambda item: -item[1])
    return ", ".join(f"{key} {count}" for key, count in causes if count)


def reservation_text(reservation: Reservation, now: datetime) -> str:
    """The node kept for a queued job and when it is expected to start there:
    ``node n3 from 2026-12-03 14:05:00 UTC (estimated start, in 12m)``."""
    if reservation.start is None:
        return f"node {reservation.node}, start unknown (a job there has no end in sight)"
    when = until(reservation.start, now)
    return f"node {reservation.node} from {utc(reservation.start)} (estimated start, {when})"


def _pull_lines(spec: JobSpec) -> list[str]:
    """How the job's image is pulled, when it says: ``pull      always, with secret
    regcred`` (a policy left unset is the agent's ``--pull-policy``)."""
    if spec.image_pull_secret is None and spec.pull_policy is None:
        return []
    policy = spec.pull_policy or "the agent's pull policy"
    secret = f", with secret {spec.image_pull_secret}" if spec.image_pull_secret else ""
    return [f"pull      {policy}{secret}"]


def _gpu_constraints(job: Job) -> str:
    """``, gpu model NVIDIA H200 with at least 40000 MiB`` when the job names them."""
    c = job.spec.constraints
    if c.gpu_model is None and c.gpu_memory_mb is None:
        return ""
    model = f" {c.gpu_model}" if c.gpu_model is not None else ""
    memory = f" with at least {c.gpu_memory_mb} MiB" if c.gpu_memory_mb is not None else ""
    return f", gpu model{model}{memory}" if model else f", gpus{memory}"


def job_detail(job: Job, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    spec = job.spec
    lines = [
        f"job       {job.id}  {job.name}",
        f"state     {job.state.value}" + (f"  ({job.reason})" if job.reason else ""),
        f"image     {spec.image}",
        *_pull_lines(spec),
        f"command   {spec.command!r}",
        f"resources cpu {spec.resources.cpu:g}, memory {spec.resources.memory_mb} MiB"
        + (f", gpus {spec.resources.gpus}" if spec.resources.gpus else "")
        + _gpu_constraints(job),
    ]
    if spec.expected_runtime_s is not None:
        expected = f"expected {spec.expected_runtime_s:g}s"
        lines.append(f"runtime   {expected}, timeout {spec.timeout_s:g}s")
    lines += [
        f"attempt   {job.attempt} on {job.node_id or '-'}"
        + (f" GPUs {','.join(str(i) for i in job.gpu_devices)}" if job.gpu_devices else "")
        + f"  (retries {job.retries}/{spec.max_retries},"
        f" requeues {job.requeues}/{spec.max_requeues})",
        f"submitted {ago(job.created_at, now)} by {job.submitted_by or '-'}",
    ]
    if spec.deadline is not None or spec.queue_timeout_s is not None:
        limits = [f"queue timeout {spec.queue_timeout_s:g}s"] if spec.queue_timeout_s else []
        if spec.deadline is not None:
            limits.append(f"deadline {spec.deadline.isoformat()}")
        lines.append(f"limits    {', '.join(limits)}")
    if job.array_id is not None:
        lines.append(f"array     {job.array_id}  index {job.array_index}")
    if job.state is JobState.QUEUED and job.queued_at is not None:
        waiting = job.reason or "to be placed"
        lines.append(f"queued    {ago(job.queued_at, now)}, waiting: {waiting}")
        if job.pending:
            lines.append(f"pending   {_pending_counts(job.pending)}")
    if job.state is JobState.QUEUED and job.reservation is not None:
        lines.append(f"reserved  {reservation_text(job.reservation, now)}")
    if job.progress is not None:
        lines.append(f"progress  {job.progress.percent:.0f}% {job.progress.message}")
    if job.exit_code is not None or job.error:
        code = f" [{job.error_code}]" if job.error_code else ""
        lines.append(f"result    exit code {job.exit_code}  {job.error or ''}{code}".rstrip())
    if job.usage is not None:
        u = job.usage
        lines.append(
            f"usage     cpu {u.cpu_percent:.0f}% (peak {u.peak_cpu_percent:.0f}%), "
            f"memory {u.memory_mb:.0f} MiB (peak {u.peak_memory_mb:.0f} MiB)"
        )
    if spec.depends_on:
        after = [
            d.job if d.when == "completed" else f"{d.job} ({d.when})" for d in spec.dependencies()
        ]
        lines.append(f"after     {', '.join(after)}")
    if job.attempts:
        lines.append("")
        rows = [
            [
                str(a.attempt),
                a.node_id or "-",
                a.state.value,
                "-" if a.exit_code is None else str(a.exit_code),
                ago(a.finished_at, now),
                a.error or "",
            ]
            for a in job.attempts
        ]
        lines.append(table(["TRY", "NODE", "ENDED", "EXIT", "WHEN", "ERROR"], rows, flexible=5))
    return "\n".join(lines)
